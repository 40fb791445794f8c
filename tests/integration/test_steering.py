"""Steering work already queued: cancel, retry the failed pages, priorities."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from producer.api import Client
from schemas.errors import ErrorCode
from schemas.messages import CACHE_WORKER, Engine, Event, JobFailed, JobOptions, JobStarted, PageCompleted, PageFailed
from schemas.tables import applied_events, jobs, pages
from tests.integration.stack import MakeStack, Stack
from tools.samples import DEMO_TEXT, lines, scanned_pdf, text_pdf


async def job_row(db: AsyncEngine, job_id: str) -> Any:
    async with db.connect() as conn:
        return (await conn.execute(select(jobs).where(jobs.c.job_id == job_id))).mappings().one()


@pytest.mark.ocr
async def test_cancel_stops_a_job_within_one_page(make_stack: MakeStack, db: AsyncEngine) -> None:
    # Given a six-page scan being read one page a task
    stack = make_stack()
    async with Client(stack.settings) as client, client.subscribe() as events:
        request = await client.submit(scanned_pdf([lines(DEMO_TEXT)] * 6), options=JobOptions(engine=Engine.RAPIDOCR))
        seen: list[Event] = []
        stream = events.for_jobs({request.job_id}, until_done=False)
        async for event in stream:
            seen.append(event)
            if isinstance(event, PageCompleted):
                break

        # When it is cancelled after its first page
        await client.cancel(request.job_id, reason="changed my mind")
        await asyncio.sleep(8)  # time enough for two more OCR pages, were it still running
        async for event in stream:
            seen.append(event)
            if event.type == "JobCancelled":
                break
        status = await client.final_status(request.job_id)

    # Then at most the page in hand was finished, the row says cancelled, and JobCancelled went out
    done = {e.page_no for e in seen if isinstance(e, PageCompleted)}
    async with db.connect() as conn:
        rows = (await conn.execute(select(pages.c.page_no).where(pages.c.job_id == request.job_id))).all()
    assert len(rows) <= 2 and len(done) <= 2
    assert status["status"] == "cancelled"
    assert (await job_row(db, request.job_id))["error_message"] == "changed my mind"
    assert "cancelled" in stack.log("worker")


async def test_retry_requeues_only_the_failed_pages(make_stack: MakeStack, db: AsyncEngine, tmp_path: Path) -> None:
    # Given a job whose page failed for good because the worker could not reach S3 (and had no
    # copy of it: its PDF cache is not the planner's, as on a host of its own)
    stack = make_stack(roles=(), PAGEWIRE_DELIVERY_LIMIT="0")
    stack.start("planner")
    stack.start("recorder")
    stack.start(
        "worker",
        name="broken",
        extra_env={"PAGEWIRE_S3_ENDPOINT_URL": "http://127.0.0.1:9", "PAGEWIRE_CACHE_DIR": str(tmp_path / "cache")},
    )
    stack.wait_ready()
    async with Client(stack.settings) as client, client.subscribe() as events:
        request = await client.submit(
            text_pdf([lines(["page one"]), lines(["page two"])]), options=JobOptions(engine=Engine.TEXT)
        )
        async for _ in events.for_jobs({request.job_id}):
            pass
        assert (await client.final_status(request.job_id))["status"] == "completed_with_errors"

        # When the fault is fixed and the failed pages are retried
        stack.signal("broken", signal.SIGTERM)
        stack.wait_exit("broken")
        stack.start("worker")
        stack.wait_ready()
        assert await client.retry(request.job_id) == [1, 2]
        async for _ in events.for_jobs({request.job_id}):
            pass

    # Then the job is completed, each page once
    row = await job_row(db, request.job_id)
    assert (row["status"], row["pages_ok"], row["pages_failed"]) == ("completed", 2, 0)


async def test_a_high_priority_job_overtakes_a_backlog(make_stack: MakeStack, db: AsyncEngine) -> None:
    # Given 200 normal pages queued, one task each, and one worker
    stack = make_stack(PAGEWIRE_TEXT_PAGES_PER_TASK="1")
    backlog = text_pdf([lines([f"normal page {n}"]) for n in range(1, 201)])
    urgent = text_pdf([lines([f"urgent page {n}"]) for n in range(1, 4)])
    async with Client(stack.settings) as client, client.subscribe() as events:
        normal = await client.submit(backlog, options=JobOptions(engine=Engine.TEXT))
        async for event in events.for_jobs({normal.job_id}, until_done=False):
            if event.type == "JobStarted":
                break
        # When a high-priority job arrives behind them
        high = await client.submit(urgent, options=JobOptions(engine=Engine.TEXT), priority=9)
        order: list[str] = []
        async for event in events.for_jobs({normal.job_id, high.job_id}):
            if event.type == "JobCompleted":
                order.append(event.job_id)
                if event.job_id == high.job_id:
                    normal_done = (await client.status(normal.job_id))["pages_done"]

    # Then it finishes first, with most of the backlog still waiting
    assert order == [high.job_id, normal.job_id]
    assert normal_done < 150


@pytest.fixture
def steady_stack(make_stack: MakeStack) -> Stack:
    stack = make_stack()
    return stack


async def follow(client: Client, job_ids: set[str], events: Any) -> list[Event]:
    return [event async for event in events.for_jobs(job_ids)]


async def test_the_same_idempotency_key_gives_one_job_planned_once(steady_stack: Stack, db: AsyncEngine) -> None:
    pdf = text_pdf([lines([f"idempotent page {n}"]) for n in range(1, 4)])
    async with Client(steady_stack.settings) as client, client.subscribe() as events:
        first = await client.submit(pdf, options=JobOptions(engine=Engine.TEXT), idempotency_key="invoice-42")
        seen = await follow(client, {first.job_id}, events)
        # When the same request comes again: through the client, which finds the job and sends nothing,
        # and as a producer of its own would retry, publishing the same JobRequest
        second = await client.submit(pdf, options=JobOptions(engine=Engine.TEXT), idempotency_key="invoice-42")
        await client.publish(first)
        # Every event of the job for some seconds after it: a second plan and its pages would be among them
        later: list[Event] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                async for event in events.for_jobs({first.job_id}, until_done=False):
                    later.append(event)

    # Then it is the same job, planned once, its pages read once
    assert second.job_id == first.job_id
    assert [e.type for e in seen].count("JobStarted") == 1
    assert not [e.type for e in later if e.type in ("JobStarted", "PageCompleted", "PageFailed")]
    row = await job_row(db, first.job_id)
    assert (row["status"], row["pages_ok"], row["idempotency_key"]) == ("completed", 3, "invoice-42")
    # and the recorder applied one plan and three pages, each once
    async with db.connect() as conn:
        applied = (
            await conn.execute(
                select(applied_events.c.type, func.count())
                .where(applied_events.c.job_id == first.job_id)
                .group_by(applied_events.c.type)
            )
        ).all()
    assert {kind: n for kind, n in applied if kind in ("JobStarted", "PageCompleted")} == {
        "JobStarted": 1,
        "PageCompleted": 3,
    }
    assert "planned already" in steady_stack.log("planner")


async def test_the_same_pdf_read_again_comes_from_the_page_cache(steady_stack: Stack, db: AsyncEngine) -> None:
    pdf = text_pdf([lines([f"cached page {n} {secrets.token_hex(4)}"]) for n in range(1, 21)])
    async with Client(steady_stack.settings) as client, client.subscribe() as events:
        first = await client.submit(pdf, options=JobOptions(engine=Engine.TEXT))
        await follow(client, {first.job_id}, events)
        # When the same content is submitted again as a new job with the same options
        again = await client.submit(pdf, options=JobOptions(engine=Engine.TEXT))
        seen = await follow(client, {again.job_id}, events)

    # Then no page is read again: no task, every page answered from the cache with the same text
    started = next(e for e in seen if isinstance(e, JobStarted))
    assert (started.tasks, started.cached_pages) == (0, 20)
    cached = [e for e in seen if isinstance(e, PageCompleted)]
    assert sorted(e.page_no for e in cached) == list(range(1, 21))
    assert {e.worker for e in cached} == {CACHE_WORKER}
    async with db.connect() as conn:
        query = select(pages.c.job_id, pages.c.text).where(pages.c.job_id.in_([first.job_id, again.job_id]))
        texts: dict[str, list[str]] = {}
        for job_id, text in (await conn.execute(query.order_by(pages.c.job_id, pages.c.page_no))).all():
            texts.setdefault(job_id, []).append(text)
    assert texts[first.job_id] == texts[again.job_id]
    assert (await job_row(db, again.job_id))["status"] == "completed"


async def test_a_deadline_already_passed_fails_the_job(steady_stack: Stack) -> None:
    async with Client(steady_stack.settings) as client, client.subscribe() as events:
        request = await client.submit(
            text_pdf([lines(["too late"])]), deadline=datetime.now(UTC) - timedelta(seconds=1)
        )
        seen = await follow(client, {request.job_id}, events)
        status = await client.final_status(request.job_id)
    assert [e.error_code for e in seen if isinstance(e, JobFailed)] == [ErrorCode.DEADLINE_EXCEEDED]
    assert (status["status"], status["error_code"]) == ("failed", "deadline_exceeded")


@pytest.mark.ocr
async def test_work_past_the_deadline_is_dropped_and_the_job_says_why(steady_stack: Stack, db: AsyncEngine) -> None:
    async with Client(steady_stack.settings) as client, client.subscribe() as events:
        request = await client.submit(
            scanned_pdf([lines(DEMO_TEXT)] * 3),
            options=JobOptions(engine=Engine.RAPIDOCR),
            deadline=datetime.now(UTC) + timedelta(seconds=1),
        )
        seen = await follow(client, {request.job_id}, events)
        status = await client.final_status(request.job_id)
    late = [e for e in seen if isinstance(e, PageFailed) and e.error_code == ErrorCode.DEADLINE_EXCEEDED]
    assert {e.page_no for e in late} >= {2, 3}
    assert (status["status"], status["error_code"]) == ("completed_with_errors", "deadline_exceeded")
