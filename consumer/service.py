"""The shell every consuming role shares: connect, declare, consume, drain on SIGTERM.

A role is a handler for one queue. The handler settles each message itself
(ack, retry or dead-letter, decided by :func:`settle`); this module only
runs it and stops it cleanly: on SIGTERM or SIGINT it cancels the consumer so
no new message arrives, waits up to the grace period for the one in hand,
closes the connection and returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from adapters import metrics
from adapters.amqp import Publisher, ack, attempt_of, close, connect, get_queue, is_last_attempt, reject
from adapters.signals import Stopper
from schemas.errors import ErrorCode, PagewireError, RetryableError
from schemas.settings import Settings

log = logging.getLogger(__name__)

Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]
FinalFailure = Callable[[PagewireError], Awaitable[None]]


async def settle_failure(
    message: AbstractIncomingMessage,
    error: BaseException,
    *,
    publisher: Publisher,
    settings: Settings,
    queue_name: str,
    on_final: FinalFailure | None,
    backoff_s: float,
) -> None:
    """Decide what a failed message becomes; the exception's class alone decides.

    - :class:`PermanentError`: report it (``on_final``), then ack: retrying cannot help.
    - retryable, or an unexpected exception, with attempts left: wait a little
      and hand it back to the queue.
    - retryable with no attempt left: report it, copy it to the dead-letter
      queue with the reason, and ack, so the job still ends and names the page.
    """
    if isinstance(error, PagewireError):
        failure = error
    else:
        log.exception("unexpected error on %s message %s", queue_name, message.message_id, exc_info=error)
        failure = RetryableError(ErrorCode.INTERNAL_ERROR, f"{type(error).__name__}: {error}")
    if not failure.retryable:
        if on_final is not None:
            await on_final(failure)
        await ack(message)
        metrics.MESSAGES.labels(queue=queue_name, outcome="failed").inc()
        return
    if not is_last_attempt(message, settings.delivery_limit):
        log.warning("attempt %s of message %s failed, retrying: %s", attempt_of(message), message.message_id, failure)
        await asyncio.sleep(backoff_s * attempt_of(message))
        await reject(message, requeue=True)
        metrics.MESSAGES.labels(queue=queue_name, outcome="retry").inc()
        return
    exhausted = RetryableError(
        failure.code if failure.code != ErrorCode.INTERNAL_ERROR else ErrorCode.RETRIES_EXHAUSTED,
        f"gave up after {attempt_of(message)} attempts: {failure.message}",
    )
    if on_final is not None:
        await on_final(exhausted)
    await publisher.dead_letter(message, exhausted, queue_name)
    await ack(message)
    metrics.MESSAGES.labels(queue=queue_name, outcome="dead_letter").inc()


async def run_consumer(
    *,
    settings: Settings,
    role: str,
    queue_name: str,
    prefetch: int,
    make_handler: Callable[[AbstractRobustConnection, Publisher], Awaitable[Handler]],
    more_queues: tuple[str, ...] = (),
    grace_s: float,
    stopper: Stopper | None = None,
) -> None:
    """Consume ``queue_name`` (and ``more_queues``, each on its own channel) until told to stop."""
    stopper = stopper or Stopper()
    stopper.install()
    health = metrics.Health(role)
    async with metrics.serving(settings.metrics_port, health, settings.metrics_host):
        connection = await connect(settings, role)
        health.watch(connection)
        try:
            publisher = await Publisher.open(connection, settings.topology)
            handler = await make_handler(connection, publisher)
            queues = []
            for name in (queue_name, *more_queues):
                # prefetch applies per channel: one channel a queue keeps it per lane.
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=prefetch)
                queues.append(await get_queue(channel, name))
            in_flight: set[asyncio.Task[None]] = set()

            async def on_message(message: AbstractIncomingMessage) -> None:
                task = asyncio.current_task()
                assert task is not None
                in_flight.add(task)
                metrics.observe_lag(queue_name, message.timestamp)
                health.beat()
                try:
                    with metrics.in_flight(queue_name):
                        await handler(message)
                finally:
                    in_flight.discard(task)

            tags = [(queue, await queue.consume(on_message)) for queue in queues]
            health.set_ready(True)
            log.info("%s consuming %s (prefetch=%s)", role, queue_name, prefetch)
            await stopper.event.wait()
            health.set_ready(False, "draining")
            log.info("%s stopping: no new messages, %s in hand", role, len(in_flight))
            for queue, tag in tags:
                await queue.cancel(tag)
            if in_flight:
                _, pending = await asyncio.wait(set(in_flight), timeout=grace_s)
                for task in pending:
                    # Unacked work goes back to the queue when the channel closes.
                    log.warning("%s: grace period over, handing back unfinished work", role)
                    task.cancel()
        finally:
            await close(connection)
    log.info("%s stopped", role)
