"""The recorder survives anything it is sent, and no job stays open for ever.

Each test runs a real ``pagewire recorder`` process on its own prefix, against the
real broker, database and S3, and publishes what would reach it straight onto the
exchanges (as a producer in another language may, past any validation at the edge).
It checks what a user sees: rows, events, messages in the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from sqlalchemy import select

from adapters.amqp import declare_topology, queue_depth
from producer.api import Client
from schemas.messages import (
    Engine,
    Event,
    JobCancelled,
    JobOptions,
    PageCompleted,
    PageTask,
    Source,
    to_body,
)
from schemas.names import HEADER_ERROR, HEADER_ERROR_CODE, HEADER_QUEUE
from schemas.settings import ClientSettings
from schemas.tables import pages as pages_table
from tests.integration.stack import MakeStack, Stack
from tests.integration.test_dead_letters import drain
from tests.integration.test_recorder_apply import job_events

pytestmark = pytest.mark.integration


@pytest.fixture
async def channel(services: Any) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(services.amqp_url)
    async with connection:
        yield await connection.channel(publisher_confirms=True)


async def publish_events(channel: AbstractChannel, stack: Stack, bodies: list[bytes]) -> None:
    """Publish raw event bodies onto the events exchange, as any producer could."""
    exchange = await channel.get_exchange(stack.topology.events_exchange)
    for body in bodies:
        await exchange.publish(aio_pika.Message(body, content_type="application/json"), "")


async def wait_for(what: str, check: Any, within_s: float = 60.0) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {within_s} s"
        await asyncio.sleep(0.2)


def started_job(job_id: str, total: int) -> list[Event]:
    queued, started, _ = job_events(job_id, total)
    return [queued, started]


def recorder_stack(make_stack: MakeStack, **variables: str) -> Stack:
    """A recorder alone on a fresh prefix, consuming."""
    return make_stack(roles=("recorder",), **variables)


async def crash_until_dead_lettered(channel: AbstractChannel, queue_name: str, limit: int) -> None:
    """Take the one message on ``queue_name`` and hand it back unsettled, as a worker that dies
    holding it does, until the broker dead-letters it."""
    queue = await channel.get_queue(queue_name)
    for _ in range(limit + 10):
        message = await queue.get(fail=False)
        if message is None:
            return
        await message.nack(requeue=True)
    raise AssertionError("the broker never dead-lettered the message")


async def collect(events: AsyncIterator[Event], within_s: float = 60.0) -> list[Event]:
    """Every event ``events`` yields, within ``within_s``."""

    async def take() -> list[Event]:
        return [e async for e in events]

    return await asyncio.wait_for(take(), within_s)


async def test_an_event_the_database_refuses_is_dead_lettered_and_fails_only_its_job(
    make_stack: MakeStack, channel: AbstractChannel
) -> None:
    # Given a recorder that gathers everything sent within half a second into one batch
    stack = recorder_stack(make_stack, PAGEWIRE_BATCH_WAIT_MS="500", PAGEWIRE_BATCH_MAX_WAIT_MS="3000")
    settings = ClientSettings.from_variables(stack.env)
    innocent, cancelled = f"innocent-{uuid.uuid4().hex[:8]}", f"poisoned-{uuid.uuid4().hex[:8]}"
    queued, started, pages = job_events(innocent, 3)
    # A page the contract lets through and PostgreSQL refuses: its number is past an integer's range
    bad_body = to_body(
        PageCompleted(
            job_id=cancelled,
            page_no=3_000_000_000,
            text="",
            confidence=1.0,
            engine=Engine.TEXT,
            duration_ms=1,
            worker="w",
        )
    )

    async with Client(settings) as client, client.subscribe() as events:
        # When it comes in one batch with another job's events, and after its own job started
        await publish_events(channel, stack, [to_body(e) for e in started_job(cancelled, 2)])
        await asyncio.sleep(1.0)
        await publish_events(
            channel, stack, [to_body(queued), to_body(started), bad_body, *[to_body(p) for p in pages]]
        )
        seen = await collect(events.for_jobs({innocent, cancelled}))

        # Then the innocent job completed, and the cancelled one failed, saying why
        terminal = {e.job_id: e for e in seen if e.type in ("JobCompleted", "JobFailed")}
        assert terminal[innocent].type == "JobCompleted"
        assert terminal[cancelled].type == "JobFailed"
        assert (await client.final_status(innocent))["status"] == "completed"
        row = await client.final_status(cancelled)
    assert (row["status"], row["error_code"]) == ("failed", "event_unrecordable")
    assert "out of int32 range" in row["error_message"]

    # And the bad event shared its batch with the other job's events, which were split from it
    refused = re.search(r"a batch of (\d+) events was refused", stack.log("recorder"))
    assert refused is not None and int(refused.group(1)) > 1, stack.log("recorder")[-3000:]
    # And the recorder is still up and consuming, the bad message is in the dead-letter queue with the reason
    assert stack.processes["recorder"].poll() is None
    _, consumers = await queue_depth(settings.amqp_url.get_secret_value(), stack.topology.recorder_queue)
    assert consumers == 1
    (dead,) = await drain(channel, stack.topology.dead_queue)
    assert dead.body == bad_body
    headers = dead.headers or {}
    assert headers[HEADER_ERROR_CODE] == "event_unrecordable"
    assert "out of int32 range" in str(headers[HEADER_ERROR])
    assert headers[HEADER_QUEUE] == stack.topology.recorder_queue


async def test_a_cancel_with_a_nul_written_by_hand_fails_its_job_and_nothing_else(
    make_stack: MakeStack, channel: AbstractChannel
) -> None:
    # Given a recorder, a running job, and another job's events in the same batch
    stack = recorder_stack(make_stack, PAGEWIRE_BATCH_WAIT_MS="500", PAGEWIRE_BATCH_MAX_WAIT_MS="3000")
    settings = ClientSettings.from_variables(stack.env)
    innocent, cancelled = f"innocent-{uuid.uuid4().hex[:8]}", f"cancelled-{uuid.uuid4().hex[:8]}"
    queued, started, pages = job_events(innocent, 2)
    # A cancel whose reason holds a NUL, written by hand past the contract (which refuses it)
    bad = json.loads(to_body(JobCancelled(job_id=cancelled, reason="stop-now")))
    bad["reason"] = "stop\x00now"
    bad_body = json.dumps(bad).encode()

    async with Client(settings) as client, client.subscribe() as events:
        await publish_events(channel, stack, [to_body(e) for e in started_job(cancelled, 2)])
        await asyncio.sleep(1.0)
        await publish_events(
            channel, stack, [to_body(queued), to_body(started), bad_body, *[to_body(p) for p in pages]]
        )
        seen = await collect(events.for_jobs({innocent, cancelled}))
        terminal = {e.job_id: e for e in seen if e.type in ("JobCompleted", "JobFailed")}
        # Then the other job completed, and the one the cancel named ended failed, saying why
        assert terminal[innocent].type == "JobCompleted"
        row = await client.final_status(cancelled)
    assert (row["status"], row["error_code"]) == ("failed", "malformed_message")
    assert "reason" in row["error_message"]
    # And the recorder is still consuming; the body is in the dead-letter queue with the reason
    assert stack.processes["recorder"].poll() is None
    (dead,) = await drain(channel, stack.topology.dead_queue)
    assert dead.body == bad_body
    assert (dead.headers or {})[HEADER_ERROR_CODE] == "malformed_message"


async def test_a_task_the_broker_gives_up_on_ends_its_pages_and_its_job(
    make_stack: MakeStack, channel: AbstractChannel
) -> None:
    # Given a running job of three pages, page 1 read by an earlier task, and a task for pages 1 to 3
    stack = recorder_stack(make_stack)
    settings = ClientSettings.from_variables(stack.env)
    job_id = f"crashing-{uuid.uuid4().hex[:8]}"
    queued, started, pages = job_events(job_id, 3)
    task = PageTask(job_id=job_id, source=queued.source, first_page=1, last_page=3, options=JobOptions())
    await declare_topology(channel, stack.topology)

    async with Client(settings) as client, client.subscribe() as events:
        await client.publisher.publish_event(queued)
        await client.publisher.publish_event(started)
        await client.publisher.publish_event(pages[0])
        await client.publisher.publish_task(task)

        # When every worker that takes the task dies with it, until the broker gives up on it
        await crash_until_dead_lettered(channel, stack.topology.tasks_queue, stack.topology.delivery_limit)
        seen = await collect(events.for_jobs({job_id}))
        row = await client.final_status(job_id)
        async with client.db.connect() as conn:
            rows = {
                r.page_no: (r.status, r.error_code)
                for r in await conn.execute(select(pages_table).where(pages_table.c.job_id == job_id))
            }

    # Then its pages end failed as process_crashed, the page read before stays read, and the job ends
    assert rows == {1: ("completed", None), 2: ("failed", "process_crashed"), 3: ("failed", "process_crashed")}
    assert (row["status"], row["pages_ok"], row["pages_failed"]) == ("completed_with_errors", 1, 2)
    assert row["error_code"] == "process_crashed"
    completed = [e for e in seen if e.type == "JobCompleted"]
    assert len(completed) == 1
    failed_pages = [e for e in seen if e.type == "PageFailed"]
    assert sorted(e.page_no for e in failed_pages) == [1, 2, 3]  # page 1's failure changed nothing
    # And `pagewire dead` still has its own copy of the task
    ready, _ = await queue_depth(settings.amqp_url.get_secret_value(), stack.topology.dead_queue)
    assert ready == 1


async def test_a_job_that_stalls_fails_once_no_task_waits(make_stack: MakeStack, channel: AbstractChannel) -> None:
    # Given a recorder that takes 2 s without an event for a stall, and two running jobs that get none
    stack = recorder_stack(make_stack, PAGEWIRE_STALL_AFTER_S="2")
    settings = ClientSettings.from_variables(stack.env)
    lost, waiting = f"lost-{uuid.uuid4().hex[:8]}", f"waiting-{uuid.uuid4().hex[:8]}"
    await declare_topology(channel, stack.topology)

    async with Client(settings) as client, client.subscribe() as events:
        for event in [*started_job(lost, 2), *started_job(waiting, 1)]:
            await client.publisher.publish_event(event)
        # ... and a task of the second still waits for a worker (none runs)
        source = Source(bucket=settings.s3_bucket, key=f"jobs/{waiting}/source.pdf")
        await client.publisher.publish_task(
            PageTask(job_id=waiting, source=source, first_page=1, last_page=1, options=JobOptions())
        )

        # When both have been quiet well past the stall time, while the task waits
        await asyncio.sleep(12)  # two sweeps past the stall time

        # Then neither failed: a waiting task may belong to either
        for job_id in (lost, waiting):
            assert (await client.final_status(job_id, wait_s=0))["status"] == "running"

        # When the queue is empty (the task taken away)
        assert len(await drain(channel, stack.topology.tasks_queue)) == 1
        seen = await collect(events.for_jobs({lost, waiting}), 30)

        # Then both fail as stalled, once each
        rows = {job_id: await client.final_status(job_id) for job_id in (lost, waiting)}
    assert {job_id: (r["status"], r["error_code"]) for job_id, r in rows.items()} == {
        lost: ("failed", "stalled"),
        waiting: ("failed", "stalled"),
    }
    assert sorted(e.job_id for e in seen if e.type == "JobFailed") == sorted([lost, waiting])
    assert stack.processes["recorder"].poll() is None
