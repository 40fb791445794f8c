"""The planner: one ``JobRequest`` in, ``JobStarted`` and a run of ``PageTask`` out.

It opens the PDF only to count pages, check the limits and see which pages
carry a real text layer (about a millisecond a page), so it stays cheap. Text
pages are packed many to a task, pages that need OCR few to a task: a task is
the unit of redelivery, and an OCR page costs seconds. Bad input ends here as
``JobFailed`` with an error code, never as a crash.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from consumer.amqp import Publisher, ack
from consumer.cancel import CancelledJobs
from consumer.pdf import PdfInfo, inspect_pdf
from consumer.sandbox import Sandbox
from consumer.service import Handler, run_consumer, settle_failure
from consumer.storage import PdfCache, Storage
from schemas.errors import ErrorCode, PagewireError, PermanentError
from schemas.messages import (
    CACHE_WORKER,
    Engine,
    JobFailed,
    JobOptions,
    JobRequest,
    JobStarted,
    PageCompleted,
    PageTask,
    Source,
    TextSource,
    job_id_of,
    options_key,
    parse_job_request,
)
from schemas.names import HIGH_PRIORITY
from schemas.settings import PlannerSettings
from schemas.tables import job_plans, page_cache

log = logging.getLogger(__name__)

FIRST_CHUNK_PAGES = 32
"""Pages judged before the first tasks go out: a long document's first page event waits for these alone."""
CHUNK_PAGES = 256
"""Pages judged a sandbox call after the first chunk."""

PREFETCH = 4
"""Jobs a planner holds at once: their downloads and database round trips overlap, their inspections take turns."""


def plan_tasks(
    first: int,
    last: int,
    text_pages: Sequence[bool],
    engine: Engine,
    *,
    text_per_task: int,
    ocr_per_task: int,
) -> list[tuple[int, int]]:
    """Split pages ``first..last`` into (first, last) task ranges.

    ``text_pages[i]`` says whether page ``i + 1`` has a real text layer. With
    ``text`` every page is cheap; with an OCR engine every page is dear; with
    ``auto`` each run of like pages is cut to its own size.
    """
    ranges: list[tuple[int, int]] = []

    def cut(start: int, end: int, size: int) -> None:
        for a in range(start, end + 1, size):
            ranges.append((a, min(a + size - 1, end)))

    if engine == Engine.TEXT:
        cut(first, last, text_per_task)
        return ranges
    if engine != Engine.AUTO:
        cut(first, last, ocr_per_task)
        return ranges
    run_start = first
    for page in range(first + 1, last + 2):
        if page > last or text_pages[page - 1] != text_pages[run_start - 1]:
            cut(run_start, page - 1, text_per_task if text_pages[run_start - 1] else ocr_per_task)
            run_start = page
    return ranges


def inspect_pdf_file(
    path: str, max_pages: int, first_page: int | None = None, last_page: int | None = None, digest: bool = True
) -> tuple[PdfInfo, str | None]:
    """In the sandbox child: page count, limits and the text layers of pages ``first_page`` to
    ``last_page`` of a PDF on disk, and (with ``digest``) its sha256, the page cache's key, from the
    same read of the file. A long document's later chunks need no digest: the first one gave it."""
    with open(path, "rb") as fh:
        data = fh.read()
    info = inspect_pdf(data, max_pages=max_pages, first_page=first_page, last_page=last_page)
    return info, hashlib.sha256(data).hexdigest() if digest else None


def page_tasks(request: JobRequest, source: Source, ranges: Sequence[tuple[int, int]]) -> list[PageTask]:
    """The tasks of a job for these page ranges."""
    return [
        PageTask(
            job_id=request.job_id,
            source=source,
            first_page=a,
            last_page=b,
            options=request.options,
            priority=request.priority,
            deadline=request.deadline,
        )
        for a, b in ranges
    ]


def missing_runs(first: int, last: int, have: set[int]) -> list[tuple[int, int]]:
    """The runs of consecutive pages in ``first..last`` not in ``have``."""
    runs: list[tuple[int, int]] = []
    for page in range(first, last + 1):
        if page in have:
            continue
        if runs and runs[-1][1] == page - 1:
            runs[-1] = (runs[-1][0], page)
        else:
            runs.append((page, page))
    return runs


class Planner:
    """Handles ``JobRequest`` messages from the jobs queue."""

    def __init__(
        self,
        settings: PlannerSettings,
        publisher: Publisher,
        cache: PdfCache,
        sandbox: Sandbox,
        db: AsyncEngine,
        cancelled: CancelledJobs | None = None,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.cache = cache
        self.sandbox = sandbox
        self.db = db
        self.cancelled = cancelled or CancelledJobs()

    async def handle(self, message: AbstractIncomingMessage) -> None:
        job_id = job_id_of(message.body)
        try:
            request = parse_job_request(message.body, message.message_id, self.settings.max_message_bytes)
            job_id = request.job_id
            await self.plan(request)
            await ack(message)
        except Exception as exc:  # settle_failure sorts it by class
            if isinstance(exc, PermanentError) and exc.code in {
                ErrorCode.MALFORMED_MESSAGE,
                ErrorCode.UNSUPPORTED_SCHEMA_VERSION,
                ErrorCode.MESSAGE_TOO_LARGE,
            }:
                # Poison: keep the body for inspection, whether or not it named a job.
                await self.publisher.dead_letter(message, exc, self.settings.topology.jobs_queue)
            await settle_failure(
                message,
                exc,
                publisher=self.publisher,
                settings=self.settings,
                queue_name=self.settings.topology.jobs_queue,
                on_final=(lambda err: self.fail(job_id, err)) if job_id else None,
                backoff_s=1.0,
            )

    async def fail(self, job_id: str, error: PagewireError) -> None:
        log.info("job %s failed: %s", job_id, error)
        await self.publisher.publish_event(JobFailed(job_id=job_id, error_code=error.code, message=error.message))

    async def plan(self, request: JobRequest) -> None:
        if request.job_id in self.cancelled:
            log.info("job %s was cancelled before it was planned", request.job_id)
            return
        if request.deadline is not None and datetime.now(UTC) > request.deadline:
            raise PermanentError(ErrorCode.DEADLINE_EXCEEDED, f"the deadline {request.deadline} passed before planning")
        async with self.db.connect() as conn:
            planned = await conn.scalar(select(job_plans.c.job_id).where(job_plans.c.job_id == request.job_id))
        if planned is not None:
            # The same idempotency key, or this request delivered again after its plan was sent.
            log.info("job %s is planned already: request dropped", request.job_id)
            return
        path = await asyncio.to_thread(self.cache.fetch, request.source)
        high = request.priority >= HIGH_PRIORITY
        budget_ends = time.monotonic() + self.settings.inspect_budget_s
        cached: dict[int, PageCompleted] = {}
        source = request.source
        first = last = tasks = 0
        # The pages are judged a chunk at a time and each chunk's tasks go out at once, so the
        # workers start on a long document while the planner judges the rest of it. JobStarted
        # follows the last chunk: it says how many tasks there are.
        chunk_first, size = request.options.first_page or 1, FIRST_CHUNK_PAGES
        while True:
            chunk_last = chunk_first + size - 1
            if request.options.last_page is not None:
                chunk_last = min(chunk_last, request.options.last_page)
            info, sha256 = await self.sandbox.call(
                inspect_pdf_file,
                str(path),
                self.settings.max_pages,
                chunk_first,
                chunk_last,
                not first,  # digest: the first chunk's sha256 serves the whole document
                budget_s=max(0.001, budget_ends - time.monotonic()),
            )
            if not first:
                assert sha256 is not None  # the first chunk is hashed
                first = info.first_page
                last = min(request.options.last_page or info.page_count, info.page_count)
                source = request.source.model_copy(update={"sha256": sha256})
                cached = await self.cached_pages(sha256, request.options, first, last)
            ranges = [
                task_range
                for run_first, run_last in missing_runs(info.first_page, info.last_page, set(cached))
                for task_range in plan_tasks(
                    run_first,
                    run_last,
                    (False,) * (info.first_page - 1) + info.text_pages,  # indexed from page 1
                    request.options.engine,
                    text_per_task=self.settings.text_pages_per_task,
                    ocr_per_task=self.settings.ocr_pages_per_task,
                )
            ]
            # All in flight at once, confirmed together: one at a time, each would wait a round trip.
            await asyncio.gather(
                *(self.publisher.publish_task(t, high=high) for t in page_tasks(request, source, ranges))
            )
            tasks += len(ranges)
            if info.last_page >= last:
                break
            chunk_first, size = info.last_page + 1, CHUNK_PAGES
        await asyncio.gather(
            self.publisher.publish_event(
                JobStarted(
                    job_id=request.job_id,
                    source=source,
                    options=request.options,
                    total_pages=last - first + 1,
                    first_page=first,
                    last_page=last,
                    tasks=tasks,
                    cached_pages=len(cached),
                    priority=request.priority,
                    idempotency_key=request.idempotency_key,
                    deadline=request.deadline,
                )
            ),
            *(self.publisher.publish_event(e.model_copy(update={"job_id": request.job_id})) for e in cached.values()),
        )
        async with self.db.begin() as conn:
            await conn.execute(
                pg_insert(job_plans)
                .values(job_id=request.job_id, tasks=tasks, cached_pages=len(cached), planned_at=func.now())
                .on_conflict_do_nothing()
            )
        log.info(
            "job %s planned: pages %s-%s in %s tasks, %s from the page cache",
            request.job_id,
            first,
            last,
            tasks,
            len(cached),
        )

    async def cached_pages(self, sha256: str, options: JobOptions, first: int, last: int) -> dict[int, PageCompleted]:
        """Pages of this content read before with the same options, as ready events."""
        query = select(page_cache).where(
            page_cache.c.sha256 == sha256,
            page_cache.c.options_key == options_key(options),
            page_cache.c.page_no.between(first, last),
        )
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return {
            row["page_no"]: PageCompleted(
                job_id="",
                page_no=row["page_no"],
                text=row["text"],
                blocks=row["blocks"] or [],
                confidence=row["confidence"],
                engine=Engine(row["engine"]),
                text_source=TextSource.TEXT if row["engine"] == Engine.TEXT else TextSource.OCR,
                duration_ms=0,
                worker=CACHE_WORKER,
            )
            for row in rows
        }


async def run(settings: PlannerSettings, grace_s: float = 30.0) -> None:
    """``pagewire planner``: plan jobs until SIGTERM."""
    storage = Storage(settings)
    cache = PdfCache(
        storage, settings.cache_dir, max_bytes=4 * settings.max_pdf_bytes, max_pdf_bytes=settings.max_pdf_bytes
    )

    sandbox = Sandbox("planner", memory_mb=settings.inspect_memory_mb)
    # A connection for each job in hand: a pool smaller than the prefetch opens and closes one per job.
    db = create_async_engine(settings.database_url.get_secret_value(), pool_pre_ping=True, pool_size=PREFETCH)

    async def make_handler(connection: AbstractRobustConnection, publisher: Publisher) -> Handler:
        await sandbox.start()
        cancelled = CancelledJobs()
        await cancelled.listen(connection, settings.topology)
        return Planner(settings, publisher, cache, sandbox, db, cancelled).handle

    await run_consumer(
        settings=settings,
        role="planner",
        queue_name=settings.topology.jobs_queue,
        prefetch=PREFETCH,
        make_handler=make_handler,
        grace_s=grace_s,
    )
    sandbox.close()
    await db.dispose()
