"""The recorder process: gather events into batches, apply each in one transaction, ack after commit."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters import metrics
from adapters.amqp import Publisher, ack, ack_all, close, connect, get_queue
from adapters.signals import Stopper
from adapters.storage import Storage
from consumer.recorder import apply as applying
from consumer.recorder.apply import is_transient, recorder_engine
from consumer.recorder.batching import collect_less_often, pipelined
from consumer.recorder.finish import Finisher
from consumer.recorder.given_up import GivenUp
from consumer.recorder.intake import Intake
from consumer.recorder.poison import describe, is_data_error, isolate, unrecordable_failure
from consumer.recorder.prepare import PreparedBatch, prepare_bodies
from consumer.recorder.sql import ACTIVE
from consumer.recorder.sweep import Sweeper
from schemas.errors import ErrorCode, PermanentError
from schemas.fields import clean_text
from schemas.messages import JobCompleted, JobFailed, completion_event_id, job_id_of, parse_event
from schemas.settings import RecorderSettings
from schemas.tables import jobs

log = logging.getLogger(__name__)

DEAD_LETTERS_PREFETCH = 10
"""Dead letters handled at once: few and rare, each a publish or a few."""


@dataclass(frozen=True)
class _Ready:
    """A batch's messages and its events prepared, waiting for its transaction.

    ``parsed`` are the messages whose bodies are events (the others were dead-lettered while
    preparing), in order: the ones a refused batch is split among.
    """

    messages: list[AbstractIncomingMessage]
    prepared: PreparedBatch
    parsed: list[AbstractIncomingMessage]


class Recorder:
    """Batches events from the recorder queue into PostgreSQL and finishes jobs."""

    def __init__(self, settings: RecorderSettings, db: AsyncEngine, publisher: Publisher, storage: Storage) -> None:
        self.settings = settings
        self.db = db
        self.publisher = publisher
        self.inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self.intake: Intake | None = None
        """The subscription feeding :attr:`inbox`, told of every message settled; tests feed it by hand."""
        self.finisher = Finisher(settings, db, publisher, storage)
        self.sweeper = Sweeper(settings, db, publisher, self.finisher)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        """The consumer's callback: a delivery joins the next batch."""
        await self.inbox.put(message)

    async def _gather(self) -> list[AbstractIncomingMessage]:
        """The next batch: events until ``batch_wait_ms`` pass without one, ``batch_max_wait_ms`` after
        the first, or ``batch_size`` of them, or ``batch_bytes`` of them.

        A lone event is applied ``batch_wait_ms`` after it came. A steady stream (a
        worker's pages, a few milliseconds apart) fills a batch for up to
        ``batch_max_wait_ms``: each transaction costs some eight statements whatever
        its size, so a batch closed at the first short pause would be small and dear.
        """
        loop = asyncio.get_running_loop()
        batch = [await self.inbox.get()]
        deadline = loop.time() + self.settings.batch_max_wait_ms / 1000
        gap = self.settings.batch_wait_ms / 1000
        size = len(batch[0].body)
        while len(batch) < self.settings.batch_size and size < self.settings.batch_bytes:
            timeout = min(gap, deadline - loop.time())
            if timeout <= 0 and self.inbox.empty():
                break
            try:
                batch.append(await asyncio.wait_for(self.inbox.get(), max(timeout, 0)))
            except TimeoutError:
                break
            size += len(batch[-1].body)
        return batch

    async def process(self, batch: list[AbstractIncomingMessage]) -> None:
        """Apply one batch (retrying the database until it answers), then ack it."""
        await self.apply(await self.prepare(batch))

    async def prepare(self, batch: list[AbstractIncomingMessage]) -> _Ready:
        """Parse a batch and make its rows; a body that is no event goes to the dead-letter queue now."""
        prepared, poison = await prepare_bodies([m.body for m in batch], self.settings.max_message_bytes)
        for index, exc in poison.items():
            await self._fail_job_of(batch[index].body, exc)
            await self.publisher.dead_letter(batch[index], exc, self.settings.topology.recorder_queue)
            await ack(batch[index])
        return _Ready(batch, prepared, [m for n, m in enumerate(batch) if n not in poison])

    async def apply(self, ready: _Ready) -> None:
        """Apply a prepared batch in one transaction, retrying the database until it answers; then ack it.

        A batch the database refuses for its data is split until the events it cannot take are
        found (:func:`consumer.recorder.poison.isolate`): those are dead-lettered and their jobs
        failed, the rest commit. Any other refusal is raised: the process ends, and its messages
        go back to the queue.
        """
        started = time.perf_counter()
        try:
            finished = await self._commit(ready.prepared)
            refused: list[tuple[AbstractIncomingMessage, BaseException]] = []
        except Exception as exc:
            if not is_data_error(exc):
                raise
            log.warning(
                "a batch of %s events was refused (%s); looking for the events at fault",
                len(ready.parsed),
                describe(exc),
            )
            finished, refused = await self._isolate(ready.parsed, exc)
        metrics.RECORDER_APPLY_SECONDS.observe(time.perf_counter() - started)
        received = ready.prepared.received
        metrics.RECORDER_BATCH_EVENTS.observe(sum(received.values()))
        for type_, count in received.items():
            metrics.RECORDER_EVENTS.labels(type=type_).inc(count)
        # Each refused message is settled on its own first: the batch's one ``multiple`` ack below
        # would otherwise take it along, unrecorded and not dead-lettered.
        for message, error in refused:
            await self._set_aside(message, error)
        # One ack for the batch: every earlier delivery was settled by the batches before it.
        await ack_all(ready.messages)
        if self.intake is not None:
            await self.intake.settled(ready.messages)
        log.debug("applied %s events", sum(received.values()))
        for applied in ready.prepared.events:
            if isinstance(applied, JobCompleted):
                self.finisher.echoed(applied.job_id)
        for job_id in finished:
            self.finisher.finish_later(job_id)

    async def _commit(self, prepared: PreparedBatch) -> list[str]:
        """One transaction for ``prepared``, retried while the database is unavailable; the jobs it finished."""
        delay = 0.2
        while True:
            try:
                async with self.db.begin() as conn:
                    return await applying.apply_prepared(conn, prepared)
            except Exception as exc:
                if is_data_error(exc) or not is_transient(exc):
                    raise
                log.warning("database unavailable (%s); retrying in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.db_retry_max_s)

    async def _isolate(
        self, messages: list[AbstractIncomingMessage], error: BaseException
    ) -> tuple[list[str], list[tuple[AbstractIncomingMessage, BaseException]]]:
        """Commit ``messages`` in ever smaller parts; the jobs finished, and the messages refused alone."""

        async def commit(part: Sequence[AbstractIncomingMessage]) -> list[str]:
            prepared, _ = await prepare_bodies([m.body for m in part], self.settings.max_message_bytes)
            return await self._commit(prepared)

        done, refused = await isolate(messages, commit, is_data_error, error)
        return [job_id for finished in done for job_id in finished], refused

    async def _set_aside(self, message: AbstractIncomingMessage, error: BaseException) -> None:
        """Dead-letter an event the database refused on its own, with why; fail its job first.

        The job's ``JobFailed`` goes out before the message is acked: should the recorder die in
        between, the message comes back, is refused again, and the same failure (same event id)
        is sent again, which changes nothing.
        """
        reason = PermanentError(ErrorCode.EVENT_UNRECORDABLE, describe(error))
        event = parse_event(message.body, self.settings.max_message_bytes)
        failure = unrecordable_failure(event, error)
        if failure is not None and await self._still_open(failure.job_id):
            await self.publisher.publish_event(failure)
            log.warning("job %s failed: %s", failure.job_id, failure.message)
        await self.publisher.dead_letter(message, reason, self.settings.topology.recorder_queue)
        await ack(message)
        metrics.MESSAGES.labels(queue=self.settings.topology.recorder_queue, outcome="dead_letter").inc()

    async def _fail_job_of(self, body: bytes, exc: PermanentError) -> None:
        """A body that is no event but names a job (a cancel whose reason holds a NUL): that job ends
        ``failed`` with the body's fault, instead of waiting for an event that will never come."""
        job_id = job_id_of(body)
        if job_id is None or not await self._still_open(job_id):
            return
        failure = JobFailed(
            event_id=completion_event_id(job_id, str(exc.code)),
            job_id=job_id,
            error_code=exc.code,
            message=clean_text(f"an event of this job could not be read and was dead-lettered: {exc.message}", 4000),
        )
        await self.publisher.publish_event(failure)
        log.warning("job %s failed: %s", job_id, failure.message)

    async def _still_open(self, job_id: str) -> bool:
        """True unless the job's row says it ended: an event for a finished job fails nothing."""
        delay = 0.2
        while True:
            try:
                async with self.db.connect() as conn:
                    status = await conn.scalar(select(jobs.c.status).where(jobs.c.job_id == job_id))
                return status is None or status in ACTIVE
            except Exception as exc:
                if not is_transient(exc):
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.db_retry_max_s)

    async def batches_forever(self) -> None:
        """Apply batches one at a time, in order, each prepared while the one before it is applied."""
        await pipelined(self._batches(), self.prepare, self.apply)

    async def _batches(self) -> AsyncIterator[list[AbstractIncomingMessage]]:
        while True:
            yield await self._gather()


async def run(settings: RecorderSettings, grace_s: float = 30.0, stopper: Stopper | None = None) -> None:
    """``pagewire recorder``: record events until SIGTERM."""
    stopper = stopper or Stopper()
    stopper.install()
    collect_less_often()
    health = metrics.Health("recorder")
    async with metrics.serving(settings.metrics_port, health, settings.metrics_host):
        await _run(settings, grace_s, stopper, health)
    log.info("recorder stopped")


async def _run(settings: RecorderSettings, grace_s: float, stopper: Stopper, health: metrics.Health) -> None:
    db = recorder_engine(settings.database_url.get_secret_value())
    connection = await connect(settings, "recorder")
    health.watch(connection)
    try:
        publisher = await Publisher.open(connection, settings.topology)
        recorder = Recorder(settings, db, publisher, Storage(settings))
        # Two batches unacked: the next batch gathers and is prepared while one is in its
        # transaction (batches_forever). With one batch's worth, nothing more would arrive
        # until the batch in PostgreSQL is acked, and the two could not overlap.
        recorder.intake = intake = Intake(
            connection,
            settings.topology.recorder_queue,
            recorder.on_message,
            budget_bytes=settings.prefetch_bytes,
            most=2 * settings.batch_size,
        )
        batcher = asyncio.create_task(recorder.batches_forever())
        sweeper = asyncio.create_task(recorder.sweeper.forever())
        await intake.start()
        # Dead letters on a channel of their own: their prefetch and acks stay apart from the batches'
        # (whose single ``multiple`` ack must not settle them).
        dead_channel = await connection.channel()
        await dead_channel.set_qos(prefetch_count=DEAD_LETTERS_PREFETCH)
        dead_queue = await get_queue(dead_channel, settings.topology.recorder_dead_queue)
        dead_tag = await dead_queue.consume(GivenUp(settings, publisher).handle)
        health.set_ready(True)
        log.info("recorder consuming %s (batch %s)", settings.topology.recorder_queue, settings.batch_size)
        stop = asyncio.create_task(stopper.event.wait())
        await asyncio.wait({stop, batcher}, return_when=asyncio.FIRST_COMPLETED)
        if batcher.done():
            batcher.result()  # a fatal error: raise it
        health.set_ready(False, "draining")
        await intake.stop()
        await dead_queue.cancel(dead_tag)
        # Messages already delivered but not applied go back to the queue when the channel closes.
        batcher.cancel()
        sweeper.cancel()
        if recorder.finisher.background:
            await asyncio.wait(set(recorder.finisher.background), timeout=grace_s)
    finally:
        await close(connection)
        await db.dispose()
