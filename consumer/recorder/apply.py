"""Applying a prepared batch in one transaction: the effect of events on ``jobs`` and ``pages``.

Idempotent: every event id goes into ``applied_events`` first and only the new
ones take effect; page rows only move up the ranks retrying < failed <
completed; a job's counters are recomputed from its page rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pydantic_core
from sqlalchemy import event as sa_event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from consumer.recorder.prepare import Columns, PageEvent, PreparedBatch, columns_of, merge_page_events, prepare_batch
from consumer.recorder.sql import (
    ACTIVE,
    CATCH_UP_PAGE_CACHE,
    COUNT_PAGES,
    END_FINISHED_JOBS,
    FILL_PAGE_CACHE,
    JOB_STUBS,
    LZ4_FOR_THIS_SESSION,
    MARK_COMPLETION_SEEN,
    RECORD_EVENTS,
    UPSERT_PAGES,
    UPSERT_QUEUED,
    UPSERT_STARTED,
)
from schemas.messages import (
    CACHE_WORKER,
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobQueued,
    JobStarted,
    PageCompleted,
    PageFailed,
)
from schemas.tables import JobStatus, jobs


def recorder_engine(database_url: str, *, pool_size: int = 4) -> AsyncEngine:
    """The recorder's database engine: lz4 for what it writes, stored boxes parsed by pydantic-core.

    No ping when a connection is taken from the pool: the ping of SQLAlchemy's asyncpg
    dialect is three round trips (BEGIN, an empty query, ROLLBACK), taken once a batch and
    once a finished job. A connection that died with the server fails its first statement
    instead, as a disconnect, which invalidates the pool: a batch is retried
    (:meth:`consumer.recorder.service.Recorder.apply`), a job's completion is published by the sweep.
    """
    # Rows come back with a page's boxes as JSON text (assembling results, the sweep): pydantic-core's
    # parser reads them several times faster than json.loads.
    db = create_async_engine(database_url, pool_size=pool_size, json_deserializer=pydantic_core.from_json)

    def use_lz4(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.run_async(lambda conn: conn.execute(LZ4_FOR_THIS_SESSION))

    sa_event.listen(db.sync_engine, "connect", use_lz4)
    return db


async def _upsert_pages(conn: AsyncConnection, merged: Sequence[PageEvent], columns: Columns, now: datetime) -> None:
    job_ids = sorted({e.job_id for e in merged})
    # A page may arrive before its job's first event: give it a row to hang on.
    await conn.execute(JOB_STUBS, {"job_ids": job_ids, "now": now})
    await conn.execute(UPSERT_PAGES, columns | {"updated_at_list": [now] * len(merged)})
    # Pages just read (not those answered from the cache) go into the page cache, keyed by
    # content and the options that shape the text, for the next job on the same PDF.
    fresh = [e for e in merged if isinstance(e, PageCompleted) and e.worker != CACHE_WORKER]
    if fresh:
        await conn.execute(
            FILL_PAGE_CACHE,
            {
                "now": now,
                "fresh_job_ids": [e.job_id for e in fresh],
                "fresh_page_nos": [e.page_no for e in fresh],
                "fresh_event_ids": [e.event_id for e in fresh],
            },
        )


async def _apply_job_event(conn: AsyncConnection, event: Event, now: datetime) -> None:
    if isinstance(event, JobQueued | JobStarted):
        values: dict[str, Any] = {
            "job_id": event.job_id,
            "status": JobStatus.QUEUED if isinstance(event, JobQueued) else JobStatus.RUNNING,
            "source_bucket": event.source.bucket,
            "source_key": event.source.key,
            "source_etag": event.source.etag,
            "options": event.options.model_dump(mode="json"),
            "created_at": event.occurred_at,
            "updated_at": now,
        }
        if isinstance(event, JobQueued):
            values.update(priority=event.priority, submitted_by=event.submitted_by, metadata=event.metadata)
        else:
            values.update(
                total_pages=event.total_pages,
                first_page=event.first_page,
                last_page=event.last_page,
                tasks=event.tasks,
                started_at=event.occurred_at,
                priority=event.priority,
                idempotency_key=event.idempotency_key,
                deadline=event.deadline,
                source_sha256=event.source.sha256,
            )
        await conn.execute(UPSERT_QUEUED if isinstance(event, JobQueued) else UPSERT_STARTED, values)
        if isinstance(event, JobStarted) and event.source.sha256:
            await conn.execute(CATCH_UP_PAGE_CACHE, {"job_id": event.job_id, "now": now})
    elif isinstance(event, JobFailed | JobCancelled):
        status = JobStatus.FAILED if isinstance(event, JobFailed) else JobStatus.CANCELLED
        error_code = str(event.error_code) if isinstance(event, JobFailed) else None
        message = event.message if isinstance(event, JobFailed) else event.reason
        stmt = pg_insert(jobs).values(
            job_id=event.job_id,
            status=status,
            error_code=error_code,
            error_message=message,
            created_at=event.occurred_at,
            updated_at=now,
            finished_at=event.occurred_at,
            completion_published_at=now,
        )
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[jobs.c.job_id],
                set_={
                    "status": status,
                    "error_code": error_code,
                    "error_message": message,
                    "finished_at": stmt.excluded.finished_at,
                    "completion_published_at": now,
                    "updated_at": now,
                },
                where=jobs.c.status.in_(ACTIVE),
            )
        )
    elif isinstance(event, JobCompleted):
        await conn.execute(
            MARK_COMPLETION_SEEN,
            {"done_job_id": event.job_id, "bucket": event.bucket, "result_keys": event.result_keys, "now": now},
        )


async def apply_batch(conn: AsyncConnection, events: Sequence[Event]) -> list[str]:
    """Apply events in one transaction (the caller's); returns the jobs this batch finished."""
    return await apply_prepared(conn, prepare_batch(events))


async def apply_prepared(conn: AsyncConnection, batch: PreparedBatch) -> list[str]:
    """Apply a :class:`PreparedBatch` in the caller's transaction; returns the jobs this batch finished."""
    now = datetime.now(UTC)
    if not batch.events:
        return []
    inserted = await conn.execute(
        RECORD_EVENTS,
        {
            "event_ids": [e.event_id for e in batch.events],
            "job_ids": [e.job_id for e in batch.events],
            "types": [e.type for e in batch.events],
            "now": now,
        },
    )
    fresh = set(inserted.scalars())
    todo = [e for e in batch.events if e.event_id in fresh]
    if len(todo) == len(batch.events):
        merged, columns = batch.merged, batch.columns
    else:
        # Some were applied before (redelivered): the best event of a page among the new ones only.
        merged = merge_page_events([e for e in todo if isinstance(e, PageCompleted | PageFailed)])
        columns = columns_of([batch.rows[e.event_id] for e in merged])
    for event in sorted(
        (e for e in todo if not isinstance(e, PageCompleted | PageFailed)), key=lambda e: e.occurred_at
    ):
        await _apply_job_event(conn, event, now)
    if merged:
        await _upsert_pages(conn, merged, columns, now)
    touched = sorted({e.job_id for e in todo})
    if not touched:
        return []
    await conn.execute(COUNT_PAGES, {"touched": touched, "now": now})
    finished = await conn.execute(END_FINISHED_JOBS, {"touched": touched, "now": now})
    return list(finished.scalars())


# SQLSTATE classes of a server that cannot serve now but may soon: 08 connection, 40 a deadlock or
# serialization failure (the other transaction wins; ours goes again), 53 insufficient resources
# (disk full, too many connections), 57 operator intervention (a shutdown, a restart under way).
_PASSING_CLASSES = frozenset({"08", "40", "53", "57"})


def is_transient(exc: BaseException) -> bool:
    """True for a lost or refused connection: the same transaction may well succeed later."""
    if isinstance(exc, OperationalError | InterfaceError | OSError | ConnectionError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    code = getattr(exc.orig, "sqlstate", None)
    return exc.connection_invalidated or (isinstance(code, str) and code[:2] in _PASSING_CLASSES)
