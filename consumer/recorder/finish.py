"""Finishing jobs: the assembled result streamed into S3, then ``JobCompleted``.

A job is finished after the commit that gave its last page a final row. Its
``JobCompleted`` carries an event id derived from the outcome, so one sent
twice (a crash between publish and bookkeeping) dedupes downstream; the row
is marked published when that event comes back through the recorder's queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adapters import metrics
from adapters.amqp import Publisher
from adapters.storage import ObjectWriter, Storage
from consumer.results import JsonResult, PageRow, markdown_page
from schemas.messages import JobCompleted, OutputFormat, completion_event_id
from schemas.s3keys import result_key
from schemas.settings import RecorderSettings
from schemas.tables import jobs, pages

log = logging.getLogger(__name__)

PAGES_AT_ONCE = 32
"""Pages read from the database and added to the results at a time: a job's results are built in
memory bounded by this, not by the job's size."""

FINISHING_AT_ONCE = 2
"""Jobs finished at a time. Each holds a database connection while it assembles and stores its
results: with more than the pool keeps (:func:`consumer.recorder.apply.recorder_engine`) beside the
batch's, the rest open connections of their own and close them after one job, a PostgreSQL backend
each (docs/benchmarks.md)."""

ECHO_WAIT_S = 60.0
"""How long the sweep leaves a job whose completion this recorder published before it publishes it again
(with the same event id): its ``JobCompleted`` comes back through the recorder's queue to mark the row."""


class Finisher:
    """Finishes jobs in the background, a few at a time, each job once at a time."""

    def __init__(self, settings: RecorderSettings, db: AsyncEngine, publisher: Publisher, storage: Storage) -> None:
        self.settings = settings
        self.db = db
        self.publisher = publisher
        self.storage = storage
        self.finishing: set[str] = set()
        self.announced: dict[str, float] = {}
        """Jobs whose ``JobCompleted`` this recorder published (monotonic time), until it is applied."""
        self.background: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(FINISHING_AT_ONCE)

    def finish_later(self, job_id: str) -> None:
        """Finish ``job_id`` in the background, unless it is being finished now."""
        if job_id in self.finishing:
            return
        self.finishing.add(job_id)
        task = asyncio.create_task(self._finish(job_id))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def echoed(self, job_id: str) -> None:
        """The ``JobCompleted`` of ``job_id`` came back and was applied: the row says it is published."""
        self.announced.pop(job_id, None)

    def waiting_for_echo(self, job_id: str, now: float) -> bool:
        """True while a completion this recorder published may still be on its way back."""
        announced = self.announced.get(job_id)
        if announced is not None and now - announced < ECHO_WAIT_S:
            return True
        self.announced.pop(job_id, None)
        return False

    async def _finish(self, job_id: str) -> None:
        try:
            async with self.slots:
                await self.finish(job_id)
        except Exception:
            log.exception("job %s: could not publish its completion yet; the sweep will retry", job_id)
        finally:
            self.finishing.discard(job_id)

    async def finish(self, job_id: str) -> None:
        """Write the assembled result to S3 and emit ``JobCompleted`` for a finished job.

        Its statements are one each, in autocommit: a transaction around them would only add
        round trips. The row is marked published when the recorder applies the ``JobCompleted``
        it gets back from the exchange, as it applies every event: until then (or a minute, after
        a lost one) the sweep leaves the job alone.
        """
        async with self.db.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            job = (await conn.execute(select(jobs).where(jobs.c.job_id == job_id))).mappings().one()
            # Each format once: rows stored before the contract deduplicated them may repeat one.
            formats = dict.fromkeys(
                (job["options"] or {}).get("output_formats") or [OutputFormat.MD, OutputFormat.JSON]
            )
            bucket = self.settings.s3_bucket
            keys = {str(fmt): result_key(job_id, str(fmt)) for fmt in formats}
            results = _Results(self.storage, bucket, keys, dict(job))
            try:
                last = 0
                while chunk := await _pages_after(conn, job_id, last):
                    await asyncio.to_thread(results.add, chunk)
                    last = chunk[-1].page_no
                await asyncio.to_thread(results.close)
            except BaseException:
                await asyncio.to_thread(results.abort)
                raise
            # The row names the results before the event announces them: a subscriber
            # that reads the row on JobCompleted finds everything there.
            await conn.execute(
                update(jobs).where(jobs.c.job_id == job_id).values(result_bucket=bucket, result_keys=keys)
            )
        event = JobCompleted(
            # Derived from the outcome: the same completion sent twice dedupes, a new outcome does not.
            event_id=completion_event_id(job_id, f"completed:{job['pages_ok']}:{job['pages_failed']}"),
            job_id=job_id,
            pages_ok=job["pages_ok"],
            pages_failed=job["pages_failed"],
            result_keys=keys,
            bucket=bucket,
        )
        await self.publisher.publish_event(event)
        self.announced[job_id] = time.monotonic()
        metrics.observe_job(job["status"], job["created_at"], job["finished_at"])
        log.info("job %s %s: %s ok, %s failed", job_id, job["status"], job["pages_ok"], job["pages_failed"])


async def _pages_after(conn: AsyncConnection, job_id: str, after: int) -> list[PageRow]:
    """The job's next :data:`PAGES_AT_ONCE` pages after page ``after``, in page order."""
    query = (
        select(*(pages.c[name] for name in PageRow.__dataclass_fields__))
        .where(pages.c.job_id == job_id, pages.c.page_no > after)
        .order_by(pages.c.page_no)
        .limit(PAGES_AT_ONCE)
    )
    return [PageRow(**row) for row in (await conn.execute(query)).mappings()]


class _Results:
    """A job's result files, built and uploaded a chunk of pages at a time (blocking: run in a thread).

    Memory holds one chunk of pages and a part of each file, whatever the job's size.
    """

    def __init__(self, storage: Storage, bucket: str, keys: dict[str, str], job: dict[str, Any]) -> None:
        self.json = JsonResult()
        self.markdown_pages = 0
        self.writers: dict[str, ObjectWriter] = {}
        for fmt, key in keys.items():
            content_type = "text/markdown; charset=utf-8" if fmt == OutputFormat.MD else "application/json"
            self.writers[fmt] = storage.writer(bucket, key, content_type)
        if OutputFormat.JSON in self.writers:
            self.writers[OutputFormat.JSON].write(self.json.head(job).encode())

    def add(self, chunk: list[PageRow]) -> None:
        for fmt, writer in self.writers.items():
            if fmt == OutputFormat.MD:
                parts = [("\n" if self.markdown_pages + n else "") + markdown_page(p) for n, p in enumerate(chunk)]
            else:
                parts = [self.json.page(p) for p in chunk]
            writer.write("".join(parts).encode())
        self.markdown_pages += len(chunk)

    def close(self) -> None:
        if OutputFormat.JSON in self.writers:
            self.writers[OutputFormat.JSON].write(self.json.tail().encode())
        for writer in self.writers.values():
            writer.close()

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()
