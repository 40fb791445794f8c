"""The RabbitMQ adapter: connections, the topology, confirmed publishing, settling.

Every process declares the whole topology at start (idempotent), so any role
may start first. Publishing is always confirmed and mandatory: a message the
broker did not route or did not confirm raises instead of vanishing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiormq.exceptions import AMQPError, ChannelInvalidStateError
from pydantic import BaseModel

from schemas.errors import PagewireError
from schemas.messages import to_body
from schemas.names import (
    CONTENT_TYPE,
    HEADER_ATTEMPTS,
    HEADER_DELIVERY_COUNT,
    HEADER_ERROR,
    HEADER_ERROR_CODE,
    HEADER_JOB_ID,
    HEADER_QUEUE,
    HEADER_TYPE,
    HIGH_TASK_ROUTING_KEY,
    JOB_ROUTING_KEY,
    TASK_ROUTING_KEY,
    Topology,
)
from schemas.settings import Settings

log = logging.getLogger(__name__)


async def connect(settings: Settings, role: str) -> AbstractRobustConnection:
    """A robust connection: it reconnects and restores channels, queues and consumers."""
    return await aio_pika.connect_robust(
        settings.amqp_url.get_secret_value(),
        client_properties={"connection_name": f"pagewire-{role}"},
    )


@dataclass(frozen=True)
class Exchanges:
    """The declared exchanges of one topology."""

    jobs: AbstractExchange
    tasks: AbstractExchange
    events: AbstractExchange
    control: AbstractExchange
    dead: AbstractExchange


async def declare_topology(channel: AbstractChannel, topology: Topology) -> Exchanges:
    """Declare every exchange and queue of ``topology``; safe to run from any process, any number of times."""
    dead = await channel.declare_exchange(topology.dead_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
    dead_queue = await channel.declare_queue(
        topology.dead_queue, durable=True, arguments=topology.dead_queue_arguments()
    )
    await dead_queue.bind(dead)
    recorder_dead_queue = await channel.declare_queue(
        topology.recorder_dead_queue, durable=True, arguments=topology.dead_queue_arguments()
    )
    await recorder_dead_queue.bind(dead)

    jobs = await channel.declare_exchange(topology.jobs_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    jobs_queue = await channel.declare_queue(
        topology.jobs_queue, durable=True, arguments=topology.work_queue_arguments()
    )
    await jobs_queue.bind(jobs, JOB_ROUTING_KEY)

    tasks = await channel.declare_exchange(topology.tasks_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    tasks_queue = await channel.declare_queue(
        topology.tasks_queue, durable=True, arguments=topology.work_queue_arguments()
    )
    await tasks_queue.bind(tasks, TASK_ROUTING_KEY)
    high_queue = await channel.declare_queue(
        topology.tasks_high_queue, durable=True, arguments=topology.work_queue_arguments()
    )
    await high_queue.bind(tasks, HIGH_TASK_ROUTING_KEY)

    events = await channel.declare_exchange(topology.events_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
    recorder_queue = await channel.declare_queue(
        topology.recorder_queue, durable=True, arguments=topology.work_queue_arguments()
    )
    await recorder_queue.bind(events)
    control = await channel.declare_exchange(topology.control_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
    return Exchanges(jobs=jobs, tasks=tasks, events=events, control=control, dead=dead)


async def get_queue(channel: AbstractChannel, name: str) -> AbstractQueue:
    """The queue ``name``, declared passively (it must exist: declare_topology made it)."""
    return await channel.get_queue(name, ensure=True)


def build_message(message: BaseModel, *, headers: dict[str, Any] | None = None) -> aio_pika.Message:
    """A persistent JSON message with the pagewire properties set."""
    body = to_body(message)
    msg_type = getattr(message, "type", type(message).__name__)
    message_id = (
        getattr(message, "event_id", None) or getattr(message, "task_id", None) or getattr(message, "job_id", "")
    )
    all_headers: dict[str, Any] = {HEADER_TYPE: msg_type}
    job_id = getattr(message, "job_id", None)
    if job_id:
        all_headers[HEADER_JOB_ID] = job_id
    all_headers.update(headers or {})
    return aio_pika.Message(
        body,
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(message_id),
        type=msg_type,
        timestamp=datetime.now(UTC),
        headers=all_headers,
    )


class Publisher:
    """Confirmed, mandatory publishing of pagewire messages on one channel.

    The channel is opened with ``on_return_raises=True``: without it a mandatory
    message that no queue takes is still confirmed (see INFRA.md), and would be
    lost without a word.
    """

    def __init__(self, exchanges: Exchanges) -> None:
        self.exchanges = exchanges

    @classmethod
    async def open(cls, connection: AbstractRobustConnection, topology: Topology) -> Publisher:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(await declare_topology(channel, topology))

    async def publish_job(self, message: BaseModel) -> None:
        await self.exchanges.jobs.publish(build_message(message), JOB_ROUTING_KEY, mandatory=True, timeout=30)

    async def publish_task(self, message: BaseModel, *, high: bool = False) -> None:
        key = HIGH_TASK_ROUTING_KEY if high else TASK_ROUTING_KEY
        await self.exchanges.tasks.publish(build_message(message), key, mandatory=True, timeout=30)

    async def publish_event(self, message: BaseModel) -> None:
        await self.exchanges.events.publish(build_message(message), "", mandatory=True, timeout=30)

    async def publish_control(self, message: BaseModel) -> None:
        """To every planner and worker listening now; not mandatory: with none running, nobody needs it."""
        await self.exchanges.control.publish(build_message(message), "", mandatory=False, timeout=30)

    async def dead_letter(self, incoming: AbstractIncomingMessage, error: PagewireError, source_queue: str) -> None:
        """Send a copy of ``incoming`` to the dead-letter queue with the reason attached."""
        headers = dict(incoming.headers or {})
        headers.update(
            {
                HEADER_ERROR_CODE: str(error.code),
                HEADER_ERROR: error.message[:1000],
                HEADER_QUEUE: source_queue,
                HEADER_ATTEMPTS: attempt_of(incoming),
            }
        )
        copy = aio_pika.Message(
            incoming.body,
            content_type=incoming.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=incoming.message_id,
            type=incoming.type,
            timestamp=datetime.now(UTC),
            headers=headers,
        )
        await self.exchanges.dead.publish(copy, "", mandatory=True, timeout=30)
        log.warning("dead-lettered message %s from %s: %s", incoming.message_id, source_queue, error)


_CHANNEL_GONE = (ChannelInvalidStateError, AMQPError, ConnectionError)


async def ack(message: AbstractIncomingMessage) -> None:
    """Ack, tolerating a channel that closed meanwhile.

    After a connection loss the broker hands every unacked message out again,
    so an ack that cannot be sent loses nothing: the message comes back, and
    applying it twice changes nothing (see the recorder).
    """
    try:
        await message.ack()
    except _CHANNEL_GONE as exc:
        log.warning("could not ack message %s (%s); the broker will deliver it again", message.message_id, exc)


async def ack_all(messages: Sequence[AbstractIncomingMessage]) -> None:
    """Ack every message not settled yet, with one ``multiple`` ack a channel (tolerating a closed one).

    The highest delivery tag of each channel's unsettled messages is acked with ``multiple``,
    which settles every tag up to it. So the caller must hold each channel's unsettled
    deliveries up to that tag (a consumer that takes them in order and settles them in
    order, as the recorder does); those already settled one by one are skipped by the broker.
    """
    last: dict[int, AbstractIncomingMessage] = {}
    for message in messages:
        if message.processed or message.delivery_tag is None:
            continue
        try:
            channel = id(message.channel)
        except _CHANNEL_GONE:
            continue  # delivered on a channel since closed: the broker hands it out again
        held = last.get(channel)
        if held is None or message.delivery_tag > (held.delivery_tag or 0):
            last[channel] = message
    for message in last.values():
        try:
            await message.ack(multiple=True)
        except _CHANNEL_GONE as exc:
            log.warning(
                "could not ack up to message %s (%s); the broker will deliver them again", message.message_id, exc
            )


async def reject(message: AbstractIncomingMessage, *, requeue: bool) -> None:
    """Reject, tolerating a closed channel (the broker requeues unacked messages itself)."""
    try:
        await message.reject(requeue=requeue)
    except _CHANNEL_GONE as exc:
        log.warning("could not reject message %s (%s); the broker will deliver it again", message.message_id, exc)


async def close(connection: AbstractRobustConnection, wait_s: float = 5.0) -> None:
    """Close, but do not wait on a broker that is gone: a robust connection would keep retrying."""
    try:
        await asyncio.wait_for(connection.close(), wait_s)
    except (TimeoutError, *_CHANNEL_GONE) as exc:
        log.warning("connection did not close cleanly (%s)", type(exc).__name__)


def attempt_of(message: AbstractIncomingMessage) -> int:
    """1 for the first delivery; quorum queues count redeliveries in ``x-delivery-count``."""
    count = (message.headers or {}).get(HEADER_DELIVERY_COUNT, 0)
    return int(count) + 1 if isinstance(count, int | str) and str(count).isdigit() else 1


def is_last_attempt(message: AbstractIncomingMessage, delivery_limit: int) -> bool:
    """True when the broker would dead-letter this message if it came back once more."""
    return attempt_of(message) > delivery_limit


async def queue_depth(amqp_url: str, queue_name: str) -> tuple[int, int]:
    """(messages ready, consumers) of a queue, read on a plain connection.

    A robust channel answers a passive declare from its cache, so counts read
    there are stale (INFRA.md); a fresh plain connection asks the broker.
    """
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        result = queue.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)
    finally:
        await connection.close()
