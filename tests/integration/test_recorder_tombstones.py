"""A deleted or expired job stays gone: the recorder drops its late events, gc forgets its inbox rows."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from producer.jobs import bury, forget_applied_events
from schemas.tables import TombstoneReason, applied_events, jobs, pages
from tests.integration.test_recorder_apply import apply, job_events, job_row, page_count


async def inbox_rows(db: AsyncEngine, job_id: str) -> int:
    async with db.connect() as conn:
        return int(await conn.scalar(select(func.count()).where(applied_events.c.job_id == job_id)) or 0)


async def test_a_deleted_job_is_not_brought_back_by_late_events(db: AsyncEngine) -> None:
    # Given a finished job, deleted as DELETE /jobs/{id} does it
    job_id = str(uuid.uuid4())
    queued, started, done = job_events(job_id, 2)
    await apply(db, [queued, started, *done])
    async with db.begin() as conn:
        await bury(conn, [job_id], TombstoneReason.DELETED)
        await conn.execute(delete(jobs).where(jobs.c.job_id == job_id))

    # When its events come again (a redelivery), and new ones (a task that was still in flight)
    _, _, late = job_events(job_id, 3)
    finished = await apply(db, [started, *done, late[2]])

    # Then nothing of it comes back
    assert finished == []
    async with db.connect() as conn:
        assert await conn.scalar(select(func.count()).where(jobs.c.job_id == job_id)) == 0
    assert await page_count(db, job_id) == 0


async def test_an_expired_job_keeps_its_row_and_gets_no_pages_back(db: AsyncEngine) -> None:
    # Given a finished job expired by retention (pages deleted, row kept, tombstone left)
    job_id = str(uuid.uuid4())
    queued, started, done = job_events(job_id, 2)
    await apply(db, [queued, started, *done])
    async with db.begin() as conn:
        await conn.execute(delete(pages).where(pages.c.job_id == job_id))
        await bury(conn, [job_id], TombstoneReason.EXPIRED)

    # When gc forgets its inbox rows and then its events are replayed
    assert await inbox_rows(db, job_id) == 4
    async with db.begin() as conn:
        assert await forget_applied_events(conn) >= 4
    assert await inbox_rows(db, job_id) == 0
    await apply(db, [started, *done])

    # Then its pages stay deleted and its row as it was
    assert await page_count(db, job_id) == 0
    row = await job_row(db, job_id)
    assert (row["status"], row["pages_ok"]) == ("completed", 2)
    assert await inbox_rows(db, job_id) == 0


async def test_other_jobs_are_untouched_by_a_tombstone(db: AsyncEngine) -> None:
    buried, alive = str(uuid.uuid4()), str(uuid.uuid4())
    async with db.begin() as conn:
        await bury(conn, [buried], TombstoneReason.DELETED)
        await bury(conn, [buried], TombstoneReason.DELETED)  # twice is fine
    queued, started, done = job_events(alive, 1)
    dead_queued, _, _ = job_events(buried, 1)

    assert await apply(db, [dead_queued, queued, started, *done]) == [alive]
    assert (await job_row(db, alive))["status"] == "completed"
