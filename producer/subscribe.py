"""Receive page events in another service: ``async for event in subscribe(settings, ...)``.

::

    from producer.subscribe import subscribe
    from schemas.settings import ClientSettings

    async with subscribe(ClientSettings(), "billing", durable=True) as events:
        async for event in events:          # JobQueued, JobStarted, PageCompleted, ... JobCompleted
            await store(event)              # acked only once this body is done

Which queue:

- no name: a private, server-named queue that exists while the iterator
  runs; events published while nobody listens are not kept;
- a name, ``durable=False``: a queue that goes away with its last consumer;
  several processes iterating on the same name share the events (each event
  goes to one of them);
- a name, ``durable=True``: a durable quorum queue that outlives the
  subscriber and broker restarts and keeps the events that arrive while the
  service is down. Delete it when you no longer need it, or it fills up.

Delivery is **at least once**. An event is acked when the loop asks for the
next one, that is after the loop body for it has finished. If the body raises,
or the process dies, the event is not acked and a named queue delivers it
again; leaving the loop with ``break`` (or the ``async with`` block without an
exception) counts as done and acks it. So deduplicate on ``event.event_id``,
or make what the body does idempotent (keying pages by ``(job_id, page_no)``
is enough for page text). A job processed twice (a crash in the drop folder's
or a producer's publish window) sends fresh page events under the same job id:
``(job_id, page_no)`` covers that too. An event handed back comes again
after events that were behind it: order is not kept on redelivery.

Bodies that do not parse (a newer event type this code does not know, say)
are acked and skipped with a warning, so one cannot block the queue. With
``job_ids`` only those jobs' events are yielded (the others are acked and
dropped); with ``until_done`` too, iteration ends once each of them has had
its terminal event (``JobCompleted``, ``JobFailed`` or ``JobCancelled``).

Prefer the ``async with`` form: it closes the connection as soon as the block
ends. A bare ``async for event in subscribe(...)`` works too; on ``break``
the connection is closed when the iterator is garbage-collected, or call
``await events.aclose()``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from types import TracebackType

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue, AbstractQueueIterator

from schemas.errors import PermanentError
from schemas.messages import TERMINAL_EVENTS, Event, parse_event
from schemas.settings import Settings

log = logging.getLogger(__name__)


class EventStream:
    """An async iterator over parsed events that acks each one when the next is asked for."""

    def __init__(
        self,
        settings: Settings,
        queue_name: str | None = None,
        *,
        durable: bool = False,
        job_ids: Collection[str] | None = None,
        until_done: bool = False,
        prefetch: int = 100,
    ) -> None:
        if until_done and not job_ids:
            raise ValueError("until_done needs job_ids: which jobs to wait for")
        self.settings = settings
        self.queue_name = queue_name
        self.durable = durable
        self.job_ids = frozenset(job_ids) if job_ids else None
        self.open_jobs = set(self.job_ids or ())
        self.until_done = until_done
        self.prefetch = prefetch
        self._connection: AbstractConnection | None = None
        self._queue: AbstractQueue | None = None
        self._messages: AbstractQueueIterator | None = None
        self._pending: AbstractIncomingMessage | None = None
        self._finished = False

    async def start(self) -> EventStream:
        """Connect and bind the queue; events published from now on are received.

        Call it (or enter ``async with``) before starting the work whose events you want,
        so none is missed; iterating calls it on first use otherwise.
        """
        if self._connection is not None:
            return self
        # A plain connection, not a robust one: a robust one restores a private queue after a broker
        # restart under a new name and silently drops what was published in between. Here the
        # iterator raises instead, and a durable queue picks up where it left off on the next start.
        self._connection = await aio_pika.connect(self.settings.amqp_url.get_secret_value())
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        exchange = await channel.declare_exchange(
            self.settings.topology.events_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        if self.queue_name is None:
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        elif self.durable:
            queue = await channel.declare_queue(self.queue_name, durable=True, arguments={"x-queue-type": "quorum"})
        else:
            queue = await channel.declare_queue(self.queue_name, auto_delete=True)
        await queue.bind(exchange)
        self._queue = queue
        self._messages = queue.iterator()
        return self

    @property
    def queue(self) -> str:
        """The queue's name (the server's name for a private queue)."""
        if self._queue is None:
            raise RuntimeError("not started")
        return self._queue.name

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        await self._settle()  # the loop body of the previous event is done
        if self._finished:
            raise StopAsyncIteration
        await self.start()
        assert self._messages is not None
        while True:
            message = await self._messages.__anext__()
            try:
                event = parse_event(message.body, self.settings.max_message_bytes)
            except PermanentError as exc:
                log.warning("skipping an event that does not parse (message %s): %s", message.message_id, exc)
                await message.ack()
                continue
            if self.job_ids is not None and event.job_id not in self.job_ids:
                await message.ack()
                continue
            self._pending = message
            if self.until_done and isinstance(event, TERMINAL_EVENTS):
                self.open_jobs.discard(event.job_id)
                self._finished = not self.open_jobs
            return event

    async def _settle(self, done: bool = True) -> None:
        message, self._pending = self._pending, None
        if message is None:
            return
        try:
            if done:
                await message.ack()
            else:
                await message.nack(requeue=True)
        except (aio_pika.exceptions.AMQPError, ConnectionError) as exc:
            # The channel is gone: the broker hands an unacked event out again by itself.
            log.warning("could not settle event message %s: %s", message.message_id, exc)

    async def aclose(self, *, done: bool = True) -> None:
        """Ack (``done``) or hand back the event in hand, and close the connection."""
        try:
            if self._connection is not None and not self._connection.is_closed:
                await self._settle(done)
                if self._messages is not None:
                    await self._messages.close()
        finally:
            if self._connection is not None:
                await asyncio.shield(self._connection.close())

    async def __aenter__(self) -> EventStream:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # An exception in the body means the event in hand was not handled: give it back.
        await self.aclose(done=exc_type is None)


def subscribe(
    settings: Settings,
    queue_name: str | None = None,
    durable: bool = False,
    job_ids: Collection[str] | None = None,
    *,
    until_done: bool = False,
    prefetch: int = 100,
) -> EventStream:
    """Events from the fanout exchange ``{prefix}.events``, parsed, acked after the loop body.

    See the module's docstring for the queue kinds and the at-least-once rules.
    """
    return EventStream(settings, queue_name, durable=durable, job_ids=job_ids, until_done=until_done, prefetch=prefetch)
