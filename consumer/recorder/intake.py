"""The recorder's subscription, holding events within a byte budget as well as a count.

RabbitMQ bounds a consumer's unacknowledged deliveries by count only, and fixes
that count when the consumer subscribes: a quorum queue takes no channel-wide
limit that could be changed later. A count alone lets a run of large events
(dense pages, each with its boxes) hold many times what small ones do. So the
count follows the events' sizes: it is kept near ``prefetch_bytes`` over the
mean size of the events lately applied, between 1 and two batches' worth. When
the right count has halved or doubled, a new consumer with it takes over on a
channel of its own and the old one is cancelled; what the old one delivered is
applied and acked on its own channel as usual, and that channel closes once
nothing of it is held.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from adapters.amqp import get_queue

log = logging.getLogger(__name__)

MEAN_WEIGHT = 0.3
"""The weight of each batch's mean event size in the running mean: a few batches of large events move
the count, one odd batch does not."""


def prefetch_for(budget_bytes: int, mean_bytes: float | None, most: int) -> int:
    """The prefetch count that holds about ``budget_bytes`` of events of ``mean_bytes`` each, in 1..``most``."""
    if not mean_bytes:
        return most
    return max(1, min(most, int(budget_bytes // mean_bytes)))


def should_change(current: int, wanted: int, most: int) -> bool:
    """Take a new count only when it has halved or doubled (or reached the most): each change
    costs a channel and a subscription."""
    return wanted != current and (2 * wanted <= current or wanted >= 2 * current or wanted == most)


@dataclass(eq=False)
class _Consumer:
    channel: AbstractChannel
    queue: AbstractQueue
    count: int
    tag: str = ""
    held: int = 0
    cancelled: bool = False


@dataclass
class Intake:
    """Deliveries from ``queue_name`` to ``deliver``, with the bytes held kept near ``budget_bytes``."""

    connection: AbstractRobustConnection
    queue_name: str
    deliver: Callable[[AbstractIncomingMessage], Awaitable[None]]
    budget_bytes: int
    most: int
    held_bytes: int = 0
    mean_bytes: float | None = None
    current: _Consumer | None = None
    retired: list[_Consumer] = field(default_factory=list)
    owners: dict[int, _Consumer] = field(default_factory=dict)

    async def start(self) -> None:
        await self._subscribe(prefetch_for(self.budget_bytes, self.mean_bytes, self.most))

    async def stop(self) -> None:
        """Cancel the subscription: nothing more is delivered; what is held is still settled as usual."""
        if self.current is not None and not self.current.cancelled:
            await self._cancel(self.current)

    async def settled(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        """``messages`` were acked (or dead-lettered): count them out, and follow their sizes."""
        if not messages:
            return
        sizes = 0
        for message in messages:
            sizes += len(message.body)
            owner = self.owners.pop(id(message), None)
            if owner is not None:
                owner.held -= 1
        self.held_bytes -= sizes
        mean = sizes / len(messages)
        self.mean_bytes = mean if self.mean_bytes is None else (1 - MEAN_WEIGHT) * self.mean_bytes + MEAN_WEIGHT * mean
        wanted = prefetch_for(self.budget_bytes, self.mean_bytes, self.most)
        if (
            self.current is not None
            and not self.current.cancelled
            and should_change(self.current.count, wanted, self.most)
        ):
            log.info(
                "events average %.0f bytes: prefetch %s -> %s to hold about %s bytes",
                self.mean_bytes,
                self.current.count,
                wanted,
                self.budget_bytes,
            )
            await self._subscribe(wanted)
        await self._close_drained()

    async def _subscribe(self, count: int) -> None:
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=count)
        consumer = _Consumer(channel, await get_queue(channel, self.queue_name), count)

        async def on_message(message: AbstractIncomingMessage) -> None:
            consumer.held += 1
            self.held_bytes += len(message.body)
            self.owners[id(message)] = consumer
            await self.deliver(message)

        consumer.tag = await consumer.queue.consume(on_message)
        old, self.current = self.current, consumer
        if old is not None:
            # The new consumer is subscribed before the old one stops: the queue is never without one.
            await self._cancel(old)

    async def _cancel(self, consumer: _Consumer) -> None:
        consumer.cancelled = True
        await consumer.queue.cancel(consumer.tag)
        self.retired.append(consumer)

    async def _close_drained(self) -> None:
        for consumer in [c for c in self.retired if c.held <= 0 and c is not self.current]:
            self.retired.remove(consumer)
            await consumer.channel.close()
