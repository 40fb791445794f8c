"""The recorder process: gather events into batches, apply each in one transaction, ack after commit."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters import metrics
from adapters.amqp import Publisher, ack, ack_all, close, connect, get_queue
from adapters.signals import Stopper
from adapters.storage import Storage
from consumer.recorder import apply as applying
from consumer.recorder.apply import is_transient, recorder_engine
from consumer.recorder.batching import collect_less_often, pipelined
from consumer.recorder.finish import Finisher
from consumer.recorder.prepare import PreparedBatch, prepare_bodies
from consumer.recorder.sweep import Sweeper
from schemas.messages import JobCompleted
from schemas.settings import RecorderSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Ready:
    """A batch's messages and its events prepared, waiting for its transaction."""

    messages: list[AbstractIncomingMessage]
    prepared: PreparedBatch


class Recorder:
    """Batches events from the recorder queue into PostgreSQL and finishes jobs."""

    def __init__(self, settings: RecorderSettings, db: AsyncEngine, publisher: Publisher, storage: Storage) -> None:
        self.settings = settings
        self.db = db
        self.publisher = publisher
        self.inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self.finisher = Finisher(settings, db, publisher, storage)
        self.sweeper = Sweeper(db, self.finisher)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        """The consumer's callback: a delivery joins the next batch."""
        await self.inbox.put(message)

    async def _gather(self) -> list[AbstractIncomingMessage]:
        """The next batch: events until ``batch_wait_ms`` pass without one, ``batch_max_wait_ms`` after
        the first, or ``batch_size`` of them.

        A lone event is applied ``batch_wait_ms`` after it came. A steady stream (a
        worker's pages, a few milliseconds apart) fills a batch for up to
        ``batch_max_wait_ms``: each transaction costs some eight statements whatever
        its size, so a batch closed at the first short pause would be small and dear.
        """
        loop = asyncio.get_running_loop()
        batch = [await self.inbox.get()]
        deadline = loop.time() + self.settings.batch_max_wait_ms / 1000
        gap = self.settings.batch_wait_ms / 1000
        while len(batch) < self.settings.batch_size:
            timeout = min(gap, deadline - loop.time())
            if timeout <= 0 and self.inbox.empty():
                break
            try:
                batch.append(await asyncio.wait_for(self.inbox.get(), max(timeout, 0)))
            except TimeoutError:
                break
        return batch

    async def process(self, batch: list[AbstractIncomingMessage]) -> None:
        """Apply one batch (retrying the database until it answers), then ack it."""
        await self.apply(await self.prepare(batch))

    async def prepare(self, batch: list[AbstractIncomingMessage]) -> _Ready:
        """Parse a batch and make its rows; a body that is no event goes to the dead-letter queue now."""
        prepared, poison = await prepare_bodies([m.body for m in batch], self.settings.max_message_bytes)
        for index, exc in poison.items():
            await self.publisher.dead_letter(batch[index], exc, self.settings.topology.recorder_queue)
            await ack(batch[index])
        return _Ready(batch, prepared)

    async def apply(self, ready: _Ready) -> None:
        """Apply a prepared batch in one transaction, retrying the database until it answers; then ack it."""
        delay = 0.2
        started = time.perf_counter()
        while True:
            try:
                async with self.db.begin() as conn:
                    finished = await applying.apply_prepared(conn, ready.prepared)
                break
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("database unavailable (%s); retrying in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.db_retry_max_s)
        metrics.RECORDER_APPLY_SECONDS.observe(time.perf_counter() - started)
        received = ready.prepared.received
        metrics.RECORDER_BATCH_EVENTS.observe(sum(received.values()))
        for type_, count in received.items():
            metrics.RECORDER_EVENTS.labels(type=type_).inc(count)
        # One ack for the batch: every earlier delivery was settled by the batches before it.
        await ack_all(ready.messages)
        log.debug("applied %s events", sum(received.values()))
        for applied in ready.prepared.events:
            if isinstance(applied, JobCompleted):
                self.finisher.echoed(applied.job_id)
        for job_id in finished:
            self.finisher.finish_later(job_id)

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
        channel = await connection.channel()
        # Two batches unacked: the next batch gathers and is prepared while one is in its
        # transaction (batches_forever). With one batch's worth, nothing more would arrive
        # until the batch in PostgreSQL is acked, and the two could not overlap.
        await channel.set_qos(prefetch_count=2 * settings.batch_size)
        queue = await get_queue(channel, settings.topology.recorder_queue)
        batcher = asyncio.create_task(recorder.batches_forever())
        sweeper = asyncio.create_task(recorder.sweeper.forever())
        tag = await queue.consume(recorder.on_message)
        health.set_ready(True)
        log.info("recorder consuming %s (batch %s)", settings.topology.recorder_queue, settings.batch_size)
        stop = asyncio.create_task(stopper.event.wait())
        await asyncio.wait({stop, batcher}, return_when=asyncio.FIRST_COMPLETED)
        if batcher.done():
            batcher.result()  # a fatal error: raise it
        health.set_ready(False, "draining")
        await queue.cancel(tag)
        # Messages already delivered but not applied go back to the queue when the channel closes.
        batcher.cancel()
        sweeper.cancel()
        if recorder.finisher.background:
            await asyncio.wait(set(recorder.finisher.background), timeout=grace_s)
    finally:
        await close(connection)
        await db.dispose()
