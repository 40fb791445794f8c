"""The recorder's apply on the real PostgreSQL: idempotent, order-free, counters derived.

These drive ``apply_batch`` directly in a transaction, the way the recorder
does, and check the rows a user would query.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from consumer.recorder import apply_batch
from schemas.errors import ErrorCode
from schemas.messages import (
    Engine,
    Event,
    JobFailed,
    JobOptions,
    JobQueued,
    JobStarted,
    PageCompleted,
    PageFailed,
    Source,
)
from schemas.tables import jobs, page_cache, pages


def job_events(job_id: str, total: int) -> tuple[JobQueued, JobStarted, list[PageCompleted]]:
    source = Source(bucket="pagewire", key=f"jobs/{job_id}/source.pdf")
    queued = JobQueued(job_id=job_id, source=source, options=JobOptions())
    started = JobStarted(
        job_id=job_id,
        source=source,
        options=JobOptions(),
        total_pages=total,
        first_page=1,
        last_page=total,
        tasks=total,
    )
    done = [
        PageCompleted(
            job_id=job_id, page_no=p, text=f"page {p}", confidence=0.9, engine=Engine.TEXT, duration_ms=1, worker="w"
        )
        for p in range(1, total + 1)
    ]
    return queued, started, done


async def apply(db: AsyncEngine, events: list[Event]) -> list[str]:
    async with db.begin() as conn:
        return await apply_batch(conn, events)


async def job_row(db: AsyncEngine, job_id: str) -> dict[str, Any]:
    async with db.connect() as conn:
        return dict((await conn.execute(select(jobs).where(jobs.c.job_id == job_id))).mappings().one())


async def page_count(db: AsyncEngine, job_id: str) -> int:
    async with db.connect() as conn:
        return len((await conn.execute(select(pages.c.page_no).where(pages.c.job_id == job_id))).all())


async def test_in_order_events_finish_the_job(db: AsyncEngine) -> None:
    job_id = str(uuid.uuid4())
    queued, started, done = job_events(job_id, 3)

    assert await apply(db, [queued, started]) == []
    finished = await apply(db, list(done))

    assert finished == [job_id]
    row = await job_row(db, job_id)
    assert (row["status"], row["pages_ok"], row["pages_failed"], row["total_pages"]) == ("completed", 3, 0, 3)


async def test_the_same_events_twice_change_nothing(db: AsyncEngine) -> None:
    job_id = str(uuid.uuid4())
    queued, started, done = job_events(job_id, 2)
    await apply(db, [queued, started, *done])
    before = await job_row(db, job_id)

    # Redelivered, in one batch and in another
    assert await apply(db, [queued, started, *done, *done]) == []

    after = await job_row(db, job_id)
    assert after["pages_ok"] == 2 and after["status"] == "completed"
    assert after["finished_at"] == before["finished_at"]
    assert await page_count(db, job_id) == 2


async def test_a_page_redone_by_a_second_worker_counts_once(db: AsyncEngine) -> None:
    job_id = str(uuid.uuid4())
    queued, started, done = job_events(job_id, 2)
    redo = done[0].model_copy(update={"event_id": str(uuid.uuid4()), "text": "again", "worker": "w2"})

    await apply(db, [queued, started, done[0], redo])
    await apply(db, [done[1]])

    row = await job_row(db, job_id)
    assert row["pages_ok"] == 2 and row["status"] == "completed"
    assert await page_count(db, job_id) == 2


async def test_pages_before_the_job_started_end_the_same(db: AsyncEngine) -> None:
    job_id = str(uuid.uuid4())
    queued, started, done = job_events(job_id, 2)

    # Pages first, then the start, then the queued event last of all
    assert await apply(db, [done[1]]) == []
    assert await apply(db, [done[0]]) == []  # total_pages unknown: not finished yet
    assert await apply(db, [started]) == [job_id]
    await apply(db, [queued])

    row = await job_row(db, job_id)
    assert (row["status"], row["pages_ok"], row["total_pages"]) == ("completed", 2, 2)
    assert row["source_key"] == queued.source.key
    assert row["created_at"] <= row["started_at"] <= row["finished_at"]


async def test_failures_retries_and_late_success(db: AsyncEngine) -> None:
    job_id = str(uuid.uuid4())
    queued, started, done = job_events(job_id, 2)
    retry = PageFailed(
        job_id=job_id, page_no=1, error_code=ErrorCode.OCR_FAILED, message="x", attempt=1, final=False, worker="w"
    )
    final = PageFailed(
        job_id=job_id, page_no=2, error_code=ErrorCode.RENDER_FAILED, message="y", attempt=3, final=True, worker="w"
    )

    await apply(db, [queued, started, retry])
    row = await job_row(db, job_id)
    assert (row["status"], row["pages_ok"], row["pages_failed"]) == ("running", 0, 0)  # a retry is not an end

    assert await apply(db, [done[0], final]) == [job_id]
    row = await job_row(db, job_id)
    assert (row["status"], row["pages_ok"], row["pages_failed"]) == ("completed_with_errors", 1, 1)
    # A late duplicate failure of a completed page does not undo it
    late = retry.model_copy(update={"event_id": str(uuid.uuid4()), "final": True})
    await apply(db, [late])
    assert (await job_row(db, job_id))["pages_ok"] == 1


async def test_job_failed_is_terminal(db: AsyncEngine) -> None:
    job_id = str(uuid.uuid4())
    queued, _, _ = job_events(job_id, 1)
    await apply(db, [queued, JobFailed(job_id=job_id, error_code=ErrorCode.NOT_A_PDF, message="nope")])
    row = await job_row(db, job_id)
    assert (row["status"], row["error_code"], row["error_message"]) == ("failed", "not_a_pdf", "nope")
    # A late JobQueued does not bring it back
    await apply(db, [queued.model_copy(update={"event_id": str(uuid.uuid4())})])
    assert (await job_row(db, job_id))["status"] == "failed"


async def test_a_failed_page_redone_later_completes_the_job(db: AsyncEngine) -> None:
    # Given a job that ended with one page failed for good
    job_id = str(uuid.uuid4())
    queued, started, done = job_events(job_id, 2)
    gave_up = PageFailed(
        job_id=job_id,
        page_no=2,
        error_code=ErrorCode.STORAGE_UNAVAILABLE,
        message="s3",
        attempt=3,
        final=True,
        worker="w",
    )
    assert await apply(db, [queued, started, done[0], gave_up]) == [job_id]
    assert (await job_row(db, job_id))["status"] == "completed_with_errors"

    # When the page is read after all (its task replayed from the dead-letter queue)
    assert await apply(db, [done[1]]) == [job_id]

    # Then the job is completed, and its completion is due to be published again
    row = await job_row(db, job_id)
    assert (row["status"], row["pages_ok"], row["pages_failed"]) == ("completed", 2, 0)
    assert row["completion_published_at"] is None


async def test_pages_read_before_job_started_still_go_into_the_page_cache(db: AsyncEngine) -> None:
    # Given pages recorded before their JobStarted, which names the content hash (the planner sends
    # it after a long document's first tasks, and a worker can be quicker)
    job_id = str(uuid.uuid4())
    sha256 = uuid.uuid4().hex * 2
    queued, started, done = job_events(job_id, 3)
    started = started.model_copy(update={"source": started.source.model_copy(update={"sha256": sha256})})
    await apply(db, [queued, done[0], done[1]])

    # When the JobStarted and the last page arrive
    await apply(db, [started])
    await apply(db, [done[2]])

    # Then every page is in the cache under the job's content hash, once
    async with db.connect() as conn:
        cached = (
            await conn.execute(select(page_cache.c.page_no, page_cache.c.text).where(page_cache.c.sha256 == sha256))
        ).all()
        await conn.execute(page_cache.delete().where(page_cache.c.sha256 == sha256))
        await conn.commit()
    assert sorted(cached) == [(1, "page 1"), (2, "page 2"), (3, "page 3")]


async def page_row(db: AsyncEngine, job_id: str, page_no: int) -> dict[str, Any]:
    async with db.connect() as conn:
        query = select(pages).where(pages.c.job_id == job_id, pages.c.page_no == page_no)
        return dict((await conn.execute(query)).mappings().one())


def retrying(job_id: str, page_no: int, attempt: int) -> PageFailed:
    return PageFailed(
        job_id=job_id,
        page_no=page_no,
        error_code=ErrorCode.OCR_FAILED,
        message=f"attempt {attempt}",
        attempt=attempt,
        final=False,
        worker="w",
    )


async def test_a_redelivered_event_does_not_take_a_new_one_s_place_in_the_batch(db: AsyncEngine) -> None:
    # Given a retry of page 1 already recorded
    job_id = str(uuid.uuid4())
    first = retrying(job_id, 1, 1)
    await apply(db, [first])

    # When it comes again in a batch ahead of a later retry of the same page
    await apply(db, [first, retrying(job_id, 1, 2)])

    # Then the page is chosen among the new events only (the rows are prepared for both, up front):
    # the later retry is the row, where choosing among all would have kept the first of equals.
    row = await page_row(db, job_id, 1)
    assert (row["attempts"], row["error_message"]) == (2, "attempt 2")
