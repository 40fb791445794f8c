"""The recorder's batches on the real PostgreSQL: each prepared while the one before it is applied.

A :class:`~consumer.recorder.Recorder` is fed messages straight into its inbox (no broker); the
messages and the publisher are stand-ins that record what was done with them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from consumer.recorder import PreparedBatch, Recorder
from consumer.recorder import apply as applying
from schemas.errors import ErrorCode, PermanentError
from schemas.messages import Event, JobFailed, parse_event
from schemas.settings import RecorderSettings
from schemas.tables import applied_events
from tests.integration.conftest import Services
from tests.integration.test_recorder_apply import apply, job_events, job_row, page_row, retrying


class Channel:
    """Delivery tags as a broker's channel hands them out, and the deliveries not settled yet."""

    def __init__(self) -> None:
        self.tags = itertools.count(1)
        self.unsettled: dict[int, Message] = {}


CHANNEL = Channel()


class Message:
    """What the recorder uses of an incoming message; ``ack`` runs ``on_ack`` first.

    As on a broker's channel, ``ack(multiple=True)`` settles every delivery up to this one,
    and a delivery settled already cannot be acked again (the broker would close the channel).
    """

    def __init__(self, body: bytes, on_ack: Callable[[Message], Awaitable[None]] | None = None) -> None:
        self.body = body
        self.processed = False
        self.message_id = str(uuid.uuid4())
        self.on_ack = on_ack
        self.channel = CHANNEL
        self.delivery_tag = next(CHANNEL.tags)
        CHANNEL.unsettled[self.delivery_tag] = self

    async def ack(self, multiple: bool = False) -> None:
        if self.delivery_tag not in self.channel.unsettled:
            raise AssertionError(f"delivery {self.delivery_tag} acked twice: PRECONDITION_FAILED")
        tags = sorted(t for t in self.channel.unsettled if t <= self.delivery_tag) if multiple else [self.delivery_tag]
        for tag in tags:
            message = self.channel.unsettled.pop(tag)
            if message.on_ack:
                await message.on_ack(message)
            message.processed = True


class Publisher:
    def __init__(self) -> None:
        self.dead: list[tuple[bytes, PermanentError]] = []
        self.events: list[Event] = []

    async def dead_letter(self, message: Message, error: PermanentError, queue: str) -> None:
        self.dead.append((message.body, error))

    async def publish_event(self, event: Event) -> None:
        self.events.append(event)


def make_recorder(services: Services, db: AsyncEngine, batch_size: int) -> tuple[Recorder, Publisher]:
    settings = RecorderSettings(database_url=services.database_url, batch_size=batch_size, batch_wait_ms=50)
    publisher = Publisher()
    return Recorder(settings, db, cast(Any, publisher), cast(Any, None)), publisher


async def record(recorder: Recorder, messages: list[Message], within_s: float = 20) -> None:
    """Put every message in the inbox at once (so batches are exactly ``batch_size``) and wait for all acks."""
    for message in messages:
        await recorder.on_message(cast(AbstractIncomingMessage, message))
    batches = asyncio.create_task(recorder.batches_forever())
    try:
        async with asyncio.timeout(within_s):
            while not all(m.processed for m in messages):
                assert not batches.done(), batches.exception()
                await asyncio.sleep(0.01)
    finally:
        batches.cancel()
        await asyncio.gather(batches, return_exceptions=True)


def body(event: Event) -> bytes:
    return event.model_dump_json().encode()


async def test_batches_land_in_order(services: Services, db: AsyncEngine) -> None:
    # Given ten batches of two, each a retry of page 1 and another page: a retry replaces a retry,
    # so page 1's row ends as the one of the last batch applied
    job_id = str(uuid.uuid4())
    _, _, done = job_events(job_id, 11)
    retries = [retrying(job_id, 1, attempt) for attempt in range(1, 11)]
    events = [e for pair in zip(retries, done[1:], strict=True) for e in pair]
    recorder, _ = make_recorder(services, db, batch_size=2)

    await record(recorder, [Message(body(e)) for e in events])

    row = await page_row(db, job_id, 1)
    assert (row["attempts"], row["error_message"], row["event_id"]) == (10, "attempt 10", retries[-1].event_id)


async def test_a_batch_is_acked_only_after_its_commit(services: Services, db: AsyncEngine) -> None:
    # Given messages whose ack looks, from another connection, for its event among those applied
    job_id = str(uuid.uuid4())
    _, _, done = job_events(job_id, 12)
    seen: dict[str, bool] = {}

    async def committed_when_acked(message: Message) -> None:
        event_id = parse_event(message.body).event_id
        async with db.connect() as conn:
            found = await conn.execute(select(applied_events.c.event_id).where(applied_events.c.event_id == event_id))
            seen[event_id] = found.first() is not None

    recorder, _ = make_recorder(services, db, batch_size=4)
    await record(recorder, [Message(body(e), committed_when_acked) for e in done])

    assert seen == {e.event_id: True for e in done}


async def test_an_event_in_two_consecutive_batches_is_applied_once(services: Services, db: AsyncEngine) -> None:
    # Given a retry, a later retry of the same page, then the first one again: three batches, the
    # third prepared while the second is in its transaction (so before the first retry proves old)
    job_id = str(uuid.uuid4())
    first, second = retrying(job_id, 1, 1), retrying(job_id, 1, 2)
    recorder, _ = make_recorder(services, db, batch_size=1)

    await record(recorder, [Message(body(first)), Message(body(second)), Message(body(first))])

    # Then the redelivered retry changed nothing: applied again it would be the row (a retry replaces a retry)
    row = await page_row(db, job_id, 1)
    assert (row["error_message"], row["event_id"]) == ("attempt 2", second.event_id)


@pytest.mark.parametrize("where", [1, 3], ids=["inside its batch", "last of its batch"])
async def test_a_poison_body_is_dead_lettered_and_the_rest_of_its_batch_applied(
    services: Services, db: AsyncEngine, where: int
) -> None:
    # Given a body that is no event among three events, in one batch: it is acked on its own
    # when the batch is prepared, the others with one ack for the batch after its commit
    job_id = str(uuid.uuid4())
    _, _, done = job_events(job_id, 3)
    messages = [Message(body(e)) for e in done]
    messages.insert(where, Message(b"{not an event"))
    recorder, publisher = make_recorder(services, db, batch_size=4)

    await record(recorder, messages)

    assert [b for b, _ in publisher.dead] == [b"{not an event"]
    for event in done:
        assert (await page_row(db, job_id, event.page_no))["event_id"] == event.event_id


async def test_a_database_error_that_is_not_transient_ends_the_batches(
    services: Services, db: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a database that refuses the second batch for good (and nothing more to come)
    job_id = str(uuid.uuid4())
    _, _, done = job_events(job_id, 4)
    real = applying.apply_prepared
    calls = 0

    async def refuse_the_second(conn: AsyncConnection, batch: PreparedBatch) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ValueError("refused")
        return await real(conn, batch)

    monkeypatch.setattr(applying, "apply_prepared", refuse_the_second)
    recorder, _ = make_recorder(services, db, batch_size=2)
    messages = [Message(body(e)) for e in done]
    for message in messages:
        await recorder.on_message(cast(AbstractIncomingMessage, message))

    # Then batches_forever raises it, though it is waiting for a third batch; only the first batch is acked
    with pytest.raises(ValueError, match="refused"):
        await asyncio.wait_for(recorder.batches_forever(), 20)
    assert [m.processed for m in messages] == [True, True, False, False]


def out_of_range(event: Event) -> bytes:
    """The page event's body with a page number the contract lets through and PostgreSQL's integer cannot hold."""
    data = json.loads(body(event))
    data["page_no"] = 3_000_000_000
    data["event_id"] = str(uuid.uuid4())  # a new event, not one already applied
    return json.dumps(data).encode()


async def test_events_the_database_refuses_are_set_aside_and_the_rest_of_their_batch_applied(
    services: Services, db: AsyncEngine
) -> None:
    # Given one batch holding: a refused page of a job that already completed, a refused page of
    # a running job, that job's other pages, and a third job's events
    finished_job, running_job, other_job = (str(uuid.uuid4()) for _ in range(3))
    queued, started, done = job_events(finished_job, 1)
    await apply(db, [queued, started, *done])
    running_queued, running_started, running_pages = job_events(running_job, 3)
    other_queued, other_started, other_pages = job_events(other_job, 2)
    bad_page = out_of_range(running_pages[0])
    bad_cancel = out_of_range(done[0])
    good = [running_queued, running_started, *running_pages[1:], other_queued, other_started, *other_pages]
    messages = [Message(body(e)) for e in good]
    messages.insert(1, Message(bad_page))
    messages.insert(4, Message(bad_cancel))
    recorder, publisher = make_recorder(services, db, batch_size=len(messages))

    # When the recorder takes the batch
    await record(recorder, messages)

    # Then every message is settled, the two refused ones dead-lettered with the reason
    assert sorted(b for b, _ in publisher.dead) == sorted([bad_page, bad_cancel])
    assert {e.code for _, e in publisher.dead} == {ErrorCode.EVENT_UNRECORDABLE}
    assert all("out of int32 range" in e.message for _, e in publisher.dead)
    # and the rest applied: the other job completed, the running job has its two good pages
    assert (await job_row(db, other_job))["status"] == "completed"
    assert (await job_row(db, running_job))["pages_ok"] == 2
    # and only the running job is failed (the finished one stays as it ended)
    (failure,) = publisher.events
    assert isinstance(failure, JobFailed)
    assert (failure.job_id, failure.error_code) == (running_job, ErrorCode.EVENT_UNRECORDABLE)
    assert (await job_row(db, finished_job))["status"] == "completed"
