"""The planner: one ``JobRequest`` in, a run of ``PageTask`` and ``JobStarted`` out.

It opens the PDF only to count its pages and check the limits (pdfium reads the
page tree, not the pages), and hashes it for the page cache, so it stays cheap
whatever the document's length. It reads no page: in ``auto`` mode each page is
judged by the worker that reads it, which hands pages that need OCR on as tasks
of their own (see :mod:`consumer.worker`). Bad input ends here as ``JobFailed``
with an error code, never as a crash.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from sqlalchemy import Integer, Text, bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from adapters.amqp import Publisher, ack
from adapters.storage import PdfCache, Storage
from consumer.cancel import CancelledJobs
from consumer.pdf import count_pages
from consumer.sandbox import Sandbox
from consumer.service import Handler, run_consumer, settle_failure
from schemas.errors import ErrorCode, PagewireError, PermanentError
from schemas.fields import clean_text
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

PREFETCH = 4
"""Jobs a planner holds at once: their downloads and database round trips overlap, their inspections take turns."""


def task_size(engine: Engine, *, text_per_task: int, ocr_per_task: int) -> int:
    """Pages a task of a job with this engine: many where the text layer may serve (``text``,
    ``auto``), few where every page is OCR. A task is the unit of redelivery."""
    return text_per_task if engine in (Engine.TEXT, Engine.AUTO) else ocr_per_task


def cut(first: int, last: int, size: int) -> list[tuple[int, int]]:
    """Pages ``first..last`` as (first, last) ranges of at most ``size`` pages."""
    return [(a, min(a + size - 1, last)) for a in range(first, last + 1, size)]


def count_pdf_file(path: str, max_pages: int, first_page: int | None = None) -> tuple[int, str]:
    """In the sandbox child: page count and limits of a PDF on disk, and its sha256 (the page
    cache's key) from the same read of the file."""
    with open(path, "rb") as fh:
        data = fh.read()
    return count_pages(data, max_pages=max_pages, first_page=first_page), hashlib.sha256(data).hexdigest()


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


def runs(pages: Iterable[int]) -> list[tuple[int, int]]:
    """Ascending ``pages`` as runs of consecutive pages, (first, last) each."""
    out: list[tuple[int, int]] = []
    for page in pages:
        if out and out[-1][1] == page - 1:
            out[-1] = (out[-1][0], page)
        else:
            out.append((page, page))
    return out


def missing_runs(first: int, last: int, have: set[int]) -> list[tuple[int, int]]:
    """The runs of consecutive pages in ``first..last`` not in ``have``."""
    return runs(page for page in range(first, last + 1) if page not in have)


# A job's statements, made once with bound parameters: built for each job, SQLAlchemy walked
# each of them every time to find its cached form.
_PLANNED = select(job_plans.c.job_id).where(job_plans.c.job_id == bindparam("job_id", type_=Text))
_RECORD_PLAN = (
    pg_insert(job_plans)
    .values(
        job_id=bindparam("job_id", type_=Text),
        tasks=bindparam("tasks", type_=Integer),
        cached_pages=bindparam("cached_pages", type_=Integer),
        planned_at=func.now(),
    )
    .on_conflict_do_nothing()
)
_CACHED_PAGES = select(page_cache).where(
    page_cache.c.sha256 == bindparam("sha256", type_=Text),
    page_cache.c.options_key == bindparam("options_key", type_=Text),
    page_cache.c.page_no.between(bindparam("first", type_=Integer), bindparam("last", type_=Integer)),
)


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
        # One connection for the job's three statements: each checkout pings the server, and jobs of
        # one page come by the hundred. The pool holds one for each job in hand.
        async with self.db.connect() as conn:
            await self._plan(request, conn)

    async def _plan(self, request: JobRequest, conn: AsyncConnection) -> None:
        planned = await conn.scalar(_PLANNED, {"job_id": request.job_id})
        if planned is not None:
            # The same idempotency key, or this request delivered again after its plan was sent.
            log.info("job %s is planned already: request dropped", request.job_id)
            return
        path, etag = await asyncio.to_thread(self.cache.fetch_version, request.source)
        count, sha256 = await self.sandbox.call(
            count_pdf_file,
            str(path),
            self.settings.max_pages,
            request.options.first_page,
            budget_s=self.settings.inspect_budget_s,
        )
        first = request.options.first_page or 1
        last = min(request.options.last_page or count, count)
        # The tasks name the version counted and hashed here: a worker that has it cached asks S3 nothing.
        source = request.source.model_copy(update={"sha256": sha256, "etag": etag})
        cached = await self.cached_pages(conn, request.job_id, sha256, request.options, first, last)
        size = task_size(
            request.options.engine,
            text_per_task=self.settings.text_pages_per_task,
            ocr_per_task=self.settings.ocr_pages_per_task,
        )
        ranges = [r for a, b in missing_runs(first, last, set(cached)) for r in cut(a, b, size)]
        # All in flight at once, confirmed together: one at a time, each would wait a round trip.
        # JobStarted follows: it says how many tasks there are.
        await asyncio.gather(
            *(
                self.publisher.publish_task(t, high=request.priority >= HIGH_PRIORITY)
                for t in page_tasks(request, source, ranges)
            )
        )
        tasks = len(ranges)
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
            *(self.publisher.publish_event(e) for e in cached.values()),
        )
        await conn.execute(_RECORD_PLAN, {"job_id": request.job_id, "tasks": tasks, "cached_pages": len(cached)})
        log.info(
            "job %s planned: pages %s-%s in %s tasks, %s from the page cache",
            request.job_id,
            first,
            last,
            tasks,
            len(cached),
        )

    @staticmethod
    async def cached_pages(
        conn: AsyncConnection, job_id: str, sha256: str, options: JobOptions, first: int, last: int
    ) -> dict[int, PageCompleted]:
        """Pages of this content read before with the same options, as ready events of ``job_id``.

        Rows stored before messages refused control characters may hold some: cleaned here.
        """
        params = {"sha256": sha256, "options_key": options_key(options), "first": first, "last": last}
        rows = (await conn.execute(_CACHED_PAGES, params)).mappings().all()
        return {
            row["page_no"]: PageCompleted(
                job_id=job_id,
                page_no=row["page_no"],
                text=clean_text(row["text"]),
                blocks=[{**block, "text": clean_text(block.get("text", ""))} for block in row["blocks"] or []],
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
    # Autocommit: every statement of the planner stands alone, and in a transaction each would take
    # three round trips (BEGIN, it, COMMIT or ROLLBACK), as would the ping of each connection taken.
    db = create_async_engine(
        settings.database_url.get_secret_value(),
        pool_pre_ping=True,
        pool_size=PREFETCH,
        isolation_level="AUTOCOMMIT",
    )

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
