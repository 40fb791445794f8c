"""The sweep, at start and every few seconds: jobs the event path alone would leave unfinished.

A job whose completion was never published (the recorder died between its
commit and the publish) is finished again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from consumer.recorder.finish import Finisher
from schemas.tables import JobStatus, jobs

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 5.0


class Sweeper:
    """Looks for jobs to finish again; see the module's docstring."""

    def __init__(self, db: AsyncEngine, finisher: Finisher) -> None:
        self.db = db
        self.finisher = finisher

    async def sweep(self) -> None:
        """Finish jobs whose completion was never published (a crash after commit)."""
        async with self.db.connect() as conn:
            stuck = (
                (
                    await conn.execute(
                        select(jobs.c.job_id).where(
                            jobs.c.status.in_([JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_ERRORS]),
                            jobs.c.completion_published_at.is_(None),
                        )
                    )
                )
                .scalars()
                .all()
            )
        now = time.monotonic()
        for job_id in stuck:
            if self.finisher.waiting_for_echo(job_id, now):
                continue  # published; its JobCompleted has not come back to be applied yet
            self.finisher.finish_later(job_id)

    async def forever(self, every_s: float = SWEEP_EVERY_S) -> None:
        """Sweep every ``every_s`` seconds; a failed sweep is logged and tried again."""
        while True:
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("sweep failed (%s); next in %s s", exc, every_s)
            await asyncio.sleep(every_s)
