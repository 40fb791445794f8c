"""The sweep, at start and every few seconds: jobs the event path alone would leave unfinished.

- A job whose completion was never published (the recorder died between its
  commit and the publish) is finished again.
- A ``running`` job that has had no event for ``PAGEWIRE_STALL_AFTER_S`` while
  no task waits in the tasks queues fails as ``stalled``: the net under every
  way a job can lose its pages (a task lost, events dropped, a bug).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.amqp import Publisher, queue_depth
from consumer.recorder.finish import Finisher
from schemas.errors import ErrorCode
from schemas.messages import JobFailed, completion_event_id
from schemas.settings import RecorderSettings
from schemas.tables import JobStatus, jobs

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 5.0
STALLED_AT_ONCE = 100
"""Stalled jobs failed in one sweep at most; the next sweep takes the rest."""


class Sweeper:
    """Looks for jobs to finish again, and for jobs that stalled; see the module's docstring."""

    def __init__(self, settings: RecorderSettings, db: AsyncEngine, publisher: Publisher, finisher: Finisher) -> None:
        self.settings = settings
        self.db = db
        self.publisher = publisher
        self.finisher = finisher

    async def sweep(self) -> None:
        """One round: unpublished completions, then stalled jobs."""
        await self.finish_unpublished()
        await self.fail_stalled()

    async def finish_unpublished(self) -> None:
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

    async def fail_stalled(self) -> list[str]:
        """Fail, as ``stalled``, running jobs with no event for ``stall_after_s`` and no task waiting; their ids.

        Why these two conditions make a job safe to fail:

        - *no task waiting*: a queued task may wait behind a backlog for hours, and only its
          queue knows its job. So nothing is failed while either tasks queue holds a ready
          message: a stalled job waits for the backlog to drain, never the other way round.
        - *no event for so long*: a task in a worker's hands is not in the ready count, but a
          worker sends an event for every page it ends, and a page ends within its budget
          (the sandbox kills it past ``PAGEWIRE_OCR_BUDGET_S``). So a job whose task is in
          hand has an event at least that often; ``stall_after_s`` must stay well above it.

        ``jobs.updated_at`` is the time of the job's last event (every applied event touches it).
        The failure goes out as a ``JobFailed`` with an event id derived from the job, applied
        through the recorder's queue like any other: sent twice (two sweeps before it comes back,
        or two recorders), it counts once. A page that comes in later is recorded but does not
        reopen the job.
        """
        cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.stall_after_s)
        async with self.db.connect() as conn:
            stalled = (
                (
                    await conn.execute(
                        select(jobs.c.job_id)
                        .where(jobs.c.status == JobStatus.RUNNING, jobs.c.updated_at < cutoff)
                        .order_by(jobs.c.updated_at)
                        .limit(STALLED_AT_ONCE)
                    )
                )
                .scalars()
                .all()
            )
        if not stalled or not await self._no_task_waiting():
            return []
        quiet_s = self.settings.stall_after_s
        for job_id in stalled:
            failure = JobFailed(
                event_id=completion_event_id(job_id, "stalled"),
                job_id=job_id,
                error_code=ErrorCode.STALLED,
                message=f"no event for over {quiet_s:g} s and no task waiting: its remaining pages were lost",
            )
            await self.publisher.publish_event(failure)
            log.warning("job %s stalled: no event for over %g s; failed", job_id, quiet_s)
        return list(stalled)

    async def _no_task_waiting(self) -> bool:
        """True when both tasks queues hold no ready message (read on a plain connection: see queue_depth)."""
        topology = self.settings.topology
        url = self.settings.amqp_url.get_secret_value()
        for queue in (topology.tasks_queue, topology.tasks_high_queue):
            ready, _ = await queue_depth(url, queue)
            if ready:
                return False
        return True

    async def forever(self, every_s: float = SWEEP_EVERY_S) -> None:
        """Sweep every ``every_s`` seconds; a failed sweep is logged and tried again."""
        while True:
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("sweep failed (%s); next in %s s", exc, every_s)
            await asyncio.sleep(every_s)
