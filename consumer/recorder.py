"""The recorder: every event into PostgreSQL, exactly once in effect.

It consumes its own durable queue bound to the events exchange, gathers
events into batches, applies each batch in one transaction and acks only
after the commit. Applying is idempotent:

- each ``event_id`` is inserted into ``applied_events`` first; an id already
  there is skipped, so a redelivered event changes nothing;
- page rows are keyed by ``(job_id, page_no)`` and only move up the ranks
  retrying < failed < completed, so order of arrival does not matter;
- a job's counters are recomputed from its page rows, never incremented.

When a job's last page lands, the same transaction marks it finished; after
the commit the recorder writes ``result.md``/``result.json`` to S3 and emits
``JobCompleted`` with an event id derived from the job id, so a completion
sent twice (a crash between publish and bookkeeping) dedupes downstream. A
sweep at start and every few seconds finishes any job whose completion was not
published (the recorder died between commit and publish).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import pydantic_core
from aio_pika.abc import AbstractIncomingMessage
from pydantic import TypeAdapter
from sqlalchemy import (
    ARRAY,
    DateTime,
    Integer,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    column,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy import event as sa_event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from adapters import metrics
from adapters.amqp import Publisher, ack, ack_all, close, connect, get_queue
from adapters.signals import Stopper
from adapters.storage import Storage
from consumer.results import PageRow, assemble_json, assemble_markdown
from schemas.errors import PermanentError
from schemas.messages import (
    CACHE_WORKER,
    Block,
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobQueued,
    JobStarted,
    NumberDisagreement,
    OutputFormat,
    PageCompleted,
    PageFailed,
    completion_event_id,
    parse_event,
)
from schemas.s3keys import result_key
from schemas.settings import RecorderSettings
from schemas.tables import JobStatus, PageStatus, applied_events, jobs, page_cache, pages

log = logging.getLogger(__name__)

PageEvent = PageCompleted | PageFailed
_PAGE_RANK = {PageStatus.RETRYING: 1, PageStatus.FAILED: 2, PageStatus.COMPLETED: 3}
_ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


def page_status(event: PageEvent) -> PageStatus:
    if isinstance(event, PageCompleted):
        return PageStatus.COMPLETED
    return PageStatus.FAILED if event.final else PageStatus.RETRYING


def merge_page_events(events: Sequence[PageEvent]) -> list[PageEvent]:
    """One event per page from a batch: the highest rank wins, the first of equals stays.

    PostgreSQL refuses to update one row twice in one ``INSERT ... ON CONFLICT``,
    and this is the same rule the upsert applies against rows already stored.
    """
    best: dict[tuple[str, int], PageEvent] = {}
    for event in events:
        key = (event.job_id, event.page_no)
        held = best.get(key)
        if held is None or _PAGE_RANK[page_status(event)] > _PAGE_RANK[page_status(held)]:
            best[key] = event
    return list(best.values())


_BLOCKS = TypeAdapter(list[Block])
_DISAGREEMENTS = TypeAdapter(list[NumberDisagreement])
_JSON_NULL = "null"  # what the JSON types store for None (a JSON null, not SQL NULL)
_EMPTY_LIST = "[]"
_JSON_COLUMNS = frozenset({"blocks", "number_disagreements"})
_PAGE_COLUMNS = [c.name for c in pages.columns]


def _page_row(event: PageEvent, now: datetime | None) -> dict[str, Any]:
    """The ``pages`` row of an event, its JSON columns as JSON text (``updated_at`` is ``now``).

    A page's boxes are serialised in one call of pydantic's encoder: about 13 times
    faster than a ``model_dump`` a box and then ``json.dumps`` (60 boxes a page).
    """
    row: dict[str, Any] = {
        "job_id": event.job_id,
        "page_no": event.page_no,
        "status": str(page_status(event)),
        "attempts": event.attempt,
        "worker": event.worker,
        "event_id": event.event_id,
        "updated_at": now,
        "engine": None,
        "text": None,
        "blocks": _JSON_NULL,
        "confidence": None,
        "duration_ms": None,
        "render_ms": None,
        "error_code": None,
        "error_message": None,
        "text_source": None,
        "rotation": 0,
        "number_disagreements": _EMPTY_LIST,
        "number_disagreement_count": 0,
    }
    if isinstance(event, PageCompleted):
        row.update(
            engine=str(event.engine),
            text=event.text,
            blocks=_BLOCKS.dump_json(event.blocks).decode(),
            confidence=event.confidence,
            duration_ms=event.duration_ms,
            render_ms=event.render_ms,
            text_source=str(event.text_source),
            rotation=event.rotation,
            number_disagreements=(
                _DISAGREEMENTS.dump_json(event.number_disagreements).decode()
                if event.number_disagreements
                else _EMPTY_LIST
            ),
            number_disagreement_count=len(event.number_disagreements),
        )
    else:
        row.update(error_code=str(event.error_code), error_message=event.message)
    return row


_Columns = dict[str, list[Any]]
_PREPARED_COLUMNS = [name for name in _PAGE_COLUMNS if name != "updated_at"]


def _columns(rows: Sequence[dict[str, Any]]) -> _Columns:
    """The page upsert's parameters, one array a column; ``updated_at`` is added when applying."""
    return {f"{name}_list": [row[name] for row in rows] for name in _PREPARED_COLUMNS}


@dataclass(frozen=True)
class PreparedBatch:
    """What :func:`apply_prepared` needs that can be made without the database.

    ``events`` are unique by event id (the first of each kept), in order of arrival; ``rows`` holds
    the ``pages`` row of every page event among them, by event id. ``merged`` and ``columns`` are
    the page events :func:`merge_page_events` keeps and their rows as the upsert's arrays, for the
    usual case where every event proves new; when some were applied before, the choice is made
    again among the new ones only, as it always was. ``received`` counts the events given, by
    type, duplicates included (for the metrics).
    """

    events: list[Event]
    rows: dict[str, dict[str, Any]]
    merged: list[PageEvent]
    columns: _Columns
    received: dict[str, int]


class _Preparing:
    """A :class:`PreparedBatch` built one event at a time."""

    def __init__(self) -> None:
        self.unique: dict[str, Event] = {}
        self.rows: dict[str, dict[str, Any]] = {}
        self.received: dict[str, int] = {}

    def add(self, event: Event) -> None:
        self.received[event.type] = self.received.get(event.type, 0) + 1
        if event.event_id in self.unique:
            return
        self.unique[event.event_id] = event
        if isinstance(event, PageCompleted | PageFailed):
            self.rows[event.event_id] = _page_row(event, None)

    def done(self) -> PreparedBatch:
        events = list(self.unique.values())
        merged = merge_page_events([e for e in events if isinstance(e, PageCompleted | PageFailed)])
        return PreparedBatch(
            events, self.rows, merged, _columns([self.rows[e.event_id] for e in merged]), self.received
        )


def prepare_batch(events: Iterable[Event]) -> PreparedBatch:
    """Everything about applying ``events`` that needs no database: dedupe, page rows, their arrays."""
    preparing = _Preparing()
    for event in events:
        preparing.add(event)
    return preparing.done()


# Preparing is CPU on the event loop (some 50 us a page event of 60 boxes, over 100 us more to parse it):
# it lets the loop run this often, so a transaction applying meanwhile sends its next statement
# as soon as PostgreSQL answers the last, rather than after the whole batch is prepared.
PAUSE_EVERY = 32


async def prepare_events(events: Sequence[Event]) -> PreparedBatch:
    """:func:`prepare_batch`, letting the event loop run every :data:`PAUSE_EVERY` events."""
    preparing = _Preparing()
    for n, event in enumerate(events, 1):
        preparing.add(event)
        if n % PAUSE_EVERY == 0:
            await asyncio.sleep(0)
    return preparing.done()


async def prepare_bodies(bodies: Sequence[bytes], max_bytes: int) -> tuple[PreparedBatch, dict[int, PermanentError]]:
    """Parse message bodies and prepare their events as :func:`prepare_events` does.

    Returns the batch and, by index in ``bodies``, the bodies that are no event (for the dead-letter queue).
    """
    preparing = _Preparing()
    poison: dict[int, PermanentError] = {}
    for n, body in enumerate(bodies):
        try:
            preparing.add(parse_event(body, max_bytes))
        except PermanentError as exc:
            poison[n] = exc
        if (n + 1) % PAUSE_EVERY == 0:
            await asyncio.sleep(0)
    return preparing.done(), poison


# Parsing a page event of 60 boxes makes some 190 objects the garbage collector tracks (the models
# and their dicts), and they live until their batch is applied. With Python's default thresholds
# (700, 10, 10) a full collection, over every object in the process, then ran about once a batch:
# 327 of 520 us an event of parsing and preparing 10,000 bodies. A tenth as often: 231 us. Cycles
# that live long enough to reach the oldest generation are freed later; others are not affected.
GC_THRESHOLDS = (700, 10, 100)


def collect_less_often() -> tuple[int, int, int]:
    """Set :data:`GC_THRESHOLDS` for this process; returns the thresholds before."""
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    return before


B = TypeVar("B")
P = TypeVar("P")


async def pipelined(
    batches: AsyncIterator[B],
    prepare: Callable[[B], Awaitable[P]],
    apply: Callable[[P], Coroutine[Any, Any, None]],
) -> None:
    """Apply every batch of ``batches`` in order, one at a time, preparing the next meanwhile.

    While batch N is applied (waiting on PostgreSQL for the most part), batch N+1 is taken from
    ``batches`` and prepared; it is applied once N's apply has returned. An exception from
    ``apply`` is raised here as soon as it happens, even while the next batch is awaited; one
    from ``batches`` or ``prepare`` too, and the apply under way is then cancelled (as it is
    when this is cancelled).
    """

    async def take() -> list[P]:
        """The next batch, prepared; none at the end."""
        try:
            batch = await anext(batches)
        except StopAsyncIteration:
            return []
        return [await prepare(batch)]

    applying: asyncio.Task[None] | None = None
    taking: asyncio.Task[list[P]] | None = None
    try:
        while True:
            taking = asyncio.create_task(take())
            if applying is not None:
                await asyncio.wait({taking, applying}, return_when=asyncio.FIRST_COMPLETED)
                if applying.done():
                    applying.result()  # a failed apply is raised now, not when the next batch comes
                    applying = None
            ready = await taking
            taking = None
            if applying is not None:
                await applying
                applying = None
            if not ready:
                return
            applying = asyncio.create_task(apply(ready[0]))
    finally:
        left = [t for t in (taking, applying) if t is not None and not t.done()]
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left)


def _rank(column: Any) -> Any:
    return case((column == PageStatus.COMPLETED, 3), (column == PageStatus.FAILED, 2), else_=1)


def _unnest(name: str, *columns: tuple[str, str, Any]) -> Any:
    """``unnest(:param, ...) AS name(column, ...)``: rows from one array parameter a column.

    The SQL is the same whatever the number of rows: compiled and prepared once, where a
    multi-row VALUES is a new statement for every size (and SQLAlchemy walks every row of it to
    find its cached form).
    """
    return (
        func.unnest(*[bindparam(param, type_=ARRAY(type_)) for param, _, type_ in columns])
        .table_valued(*[column(column_name, type_) for _, column_name, type_ in columns])
        .render_derived(name=name)
    )


def _upsert_pages_statement() -> Any:
    """``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE``: a batch's page rows in one statement.

    One array a column, so the SQL is the same for every batch size (a multi-row
    VALUES of a new size every batch is compiled afresh each time: measured 5x
    slower), and one statement rather than an executemany of one per row (measured:
    about 15 % less CPU in both the recorder and PostgreSQL). JSON columns travel as
    text already serialised (see :func:`_page_row`) and are cast to their column's
    type there, where the JSON types would have run ``json.dumps`` on every value.
    The rows must have distinct keys, which :func:`merge_page_events` makes sure of.
    """
    batch = _unnest(
        "batch", *[(f"{c.name}_list", c.name, Text() if c.name in _JSON_COLUMNS else c.type) for c in pages.columns]
    )
    stmt = pg_insert(pages).from_select(
        _PAGE_COLUMNS,
        select(*[cast(batch.c[n], pages.c[n].type) if n in _JSON_COLUMNS else batch.c[n] for n in _PAGE_COLUMNS]),
    )
    new = stmt.excluded
    keep = {"job_id", "page_no", "attempts"}
    return stmt.on_conflict_do_update(
        index_elements=[pages.c.job_id, pages.c.page_no],
        set_={c.name: new[c.name] for c in pages.columns if c.name not in keep}
        | {"attempts": func.greatest(pages.c.attempts, new.attempts)},
        where=or_(
            _rank(new.status) > _rank(pages.c.status),
            and_(pages.c.status == PageStatus.RETRYING, new.status == PageStatus.RETRYING),
        ),
    )


_UPSERT_PAGES = _upsert_pages_statement()


# lz4 for the TOAST values this session writes (a page's boxes and text), where the server
# has it: PostgreSQL's default, pglz, took about a quarter of PostgreSQL's CPU in the recorder
# bench (60 of 260 us an event; parsing the boxes into JSONB took about half of what was left,
# which is why they are json since migration 0005).
# Only for columns that name no compression of their own; each value records its method, so
# reading is the same either way. On the corpus's pages lz4 stores boxes about 10 % larger.
# Set once a connection (recorder_engine), not once a transaction: a round trip a batch less.
_LZ4_FOR_THIS_SESSION = (
    "SELECT set_config('default_toast_compression', 'lz4', false) FROM pg_settings"
    " WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)"
)


def recorder_engine(database_url: str, *, pool_size: int = 4) -> AsyncEngine:
    """The recorder's database engine: lz4 for what it writes, stored boxes parsed by pydantic-core.

    No ping when a connection is taken from the pool: the ping of SQLAlchemy's asyncpg
    dialect is three round trips (BEGIN, an empty query, ROLLBACK), taken once a batch and
    once a finished job. A connection that died with the server fails its first statement
    instead, as a disconnect, which invalidates the pool: a batch is retried
    (:meth:`Recorder.apply`), a job's completion is published by the sweep.
    """
    # Rows come back with a page's boxes as JSON text (assembling results, the sweep): pydantic-core's
    # parser reads them several times faster than json.loads.
    db = create_async_engine(database_url, pool_size=pool_size, json_deserializer=pydantic_core.from_json)

    def use_lz4(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.run_async(lambda conn: conn.execute(_LZ4_FOR_THIS_SESSION))

    sa_event.listen(db.sync_engine, "connect", use_lz4)
    return db


async def _upsert_pages(conn: AsyncConnection, merged: Sequence[PageEvent], columns: _Columns, now: datetime) -> None:
    job_ids = sorted({e.job_id for e in merged})
    # A page may arrive before its job's first event: give it a row to hang on.
    await conn.execute(_JOB_STUBS, {"job_ids": job_ids, "now": now})
    await conn.execute(_UPSERT_PAGES, columns | {"updated_at_list": [now] * len(merged)})
    # Pages just read (not those answered from the cache) go into the page cache, keyed by
    # content and the options that shape the text, for the next job on the same PDF.
    fresh = [e for e in merged if isinstance(e, PageCompleted) and e.worker != CACHE_WORKER]
    if fresh:
        await conn.execute(
            _FILL_PAGE_CACHE,
            {
                "now": now,
                "fresh_job_ids": [e.job_id for e in fresh],
                "fresh_page_nos": [e.page_no for e in fresh],
                "fresh_event_ids": [e.event_id for e in fresh],
            },
        )


def _cache_rows(pages_of: Any, *where: Any) -> Any:
    """``INSERT INTO page_cache`` the ``pages`` rows reached through ``pages_of``, of jobs with a source hash."""
    return (
        pg_insert(page_cache)
        .from_select(
            ["sha256", "page_no", "options_key", "engine", "text", "blocks", "confidence", "created_at"],
            select(
                jobs.c.source_sha256,
                pages.c.page_no,
                jobs.c.options["engine"].astext + ":" + jobs.c.options["dpi"].astext,
                pages.c.engine,
                pages.c.text,
                pages.c.blocks,
                pages.c.confidence,
                bindparam("now", type_=DateTime(timezone=True)),
            )
            .select_from(pages_of.join(jobs, pages.c.job_id == jobs.c.job_id))
            .where(jobs.c.source_sha256.is_not(None), *where),
        )
        .on_conflict_do_nothing()
    )


def _fill_page_cache() -> Any:
    """The page cache rows of the pages just written for the given events.

    Rows are found by key, ``(job_id, page_no)`` with the event's id (so only rows this batch
    wrote), through the primary key; a filter on ``event_id`` alone, which has no index,
    read the whole ``pages`` table once a batch.
    """
    fresh = _unnest(
        "fresh",
        ("fresh_job_ids", "job_id", Text),
        ("fresh_page_nos", "page_no", Integer),
        ("fresh_event_ids", "event_id", Text),
    )
    return _cache_rows(
        fresh.join(
            pages,
            and_(
                pages.c.job_id == fresh.c.job_id,
                pages.c.page_no == fresh.c.page_no,
                pages.c.event_id == fresh.c.event_id,
            ),
        )
    )


_FILL_PAGE_CACHE = _fill_page_cache()

# The page cache rows of a job's pages read before its JobStarted named the content hash: the
# planner sends JobStarted after a long document's tasks, and workers may be quicker.
_CATCH_UP_PAGE_CACHE = _cache_rows(
    pages,
    pages.c.job_id == bindparam("job_id", type_=Text),
    pages.c.status == PageStatus.COMPLETED,
    pages.c.worker != CACHE_WORKER,
)


# The jobs a batch touched, and its time. The statements of an event and a batch are made once, as constants:
# built for each one, SQLAlchemy walked each of them every time to find its cached form.
_TOUCHED = bindparam("touched", type_=ARRAY(Text))
_NOW = bindparam("now", type_=DateTime(timezone=True))

_FILLED_ONCE = ("source_bucket", "source_key", "source_etag", "options", "submitted_by", "metadata")
_QUEUED_COLUMNS = ("priority", "submitted_by", "metadata")
_STARTED_COLUMNS = (
    "total_pages",
    "first_page",
    "last_page",
    "tasks",
    "started_at",
    "priority",
    "idempotency_key",
    "deadline",
    "source_sha256",
)
_JOB_COLUMNS = ("job_id", "status", "source_bucket", "source_key", "source_etag", "options", "created_at", "updated_at")


def _job_upsert_statement(started: bool) -> Any:
    """The ``jobs`` upsert of a ``JobStarted`` (or of a ``JobQueued``), its values bound by column name.

    Made once: a statement built for each event cost SQLAlchemy a walk over it every time, to find its cached form.
    """
    names = _JOB_COLUMNS + (_STARTED_COLUMNS if started else _QUEUED_COLUMNS)
    stmt = pg_insert(jobs).values({name: bindparam(name, type_=jobs.c[name].type) for name in names})
    new = stmt.excluded
    sets: dict[str, Any] = {name: func.coalesce(jobs.c[name], new[name]) for name in _FILLED_ONCE}
    sets |= {"created_at": func.least(jobs.c.created_at, new.created_at), "updated_at": new.updated_at}
    if not started:
        sets["priority"] = new.priority
    else:
        sets |= {
            "priority": new.priority,
            "idempotency_key": new.idempotency_key,
            "deadline": new.deadline,
            "source_sha256": new.source_sha256,
            "total_pages": new.total_pages,
            "first_page": new.first_page,
            "last_page": new.last_page,
            "tasks": new.tasks,
            "started_at": func.coalesce(jobs.c.started_at, new.started_at),
            "status": case((jobs.c.status == JobStatus.QUEUED, JobStatus.RUNNING), else_=jobs.c.status),
        }
    return stmt.on_conflict_do_update(index_elements=[jobs.c.job_id], set_=sets)


_UPSERT_QUEUED, _UPSERT_STARTED = _job_upsert_statement(False), _job_upsert_statement(True)

_MARK_COMPLETION_SEEN = (
    update(jobs)
    .where(jobs.c.job_id == bindparam("done_job_id", type_=Text))
    .values(
        result_bucket=bindparam("bucket", type_=Text),
        result_keys=bindparam("result_keys", type_=jobs.c.result_keys.type),
        completion_published_at=func.coalesce(jobs.c.completion_published_at, _NOW),
        updated_at=_NOW,
    )
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
        await conn.execute(_UPSERT_QUEUED if isinstance(event, JobQueued) else _UPSERT_STARTED, values)
        if isinstance(event, JobStarted) and event.source.sha256:
            await conn.execute(_CATCH_UP_PAGE_CACHE, {"job_id": event.job_id, "now": now})
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
                where=jobs.c.status.in_(_ACTIVE),
            )
        )
    elif isinstance(event, JobCompleted):
        await conn.execute(
            _MARK_COMPLETION_SEEN,
            {"done_job_id": event.job_id, "bucket": event.bucket, "result_keys": event.result_keys, "now": now},
        )


def _record_events_statement() -> Any:
    """Insert the batch's event ids into ``applied_events``, returning those that were not there."""
    new = _unnest("new_events", ("event_ids", "event_id", Text), ("job_ids", "job_id", Text), ("types", "type", Text))
    return (
        pg_insert(applied_events)
        .from_select(
            ["event_id", "job_id", "type", "applied_at"],
            select(new.c.event_id, new.c.job_id, new.c.type, bindparam("now", type_=DateTime(timezone=True))),
        )
        .on_conflict_do_nothing()
        .returning(applied_events.c.event_id)
    )


_RECORD_EVENTS = _record_events_statement()


def _job_stubs_statement() -> Any:
    """A ``jobs`` row for each job id given that has none yet (a page may come before its job's first event)."""
    new = _unnest("new_jobs", ("job_ids", "job_id", Text))
    now = bindparam("now", type_=DateTime(timezone=True))
    return (
        pg_insert(jobs)
        .from_select(
            ["job_id", "status", "created_at", "updated_at"],
            select(new.c.job_id, literal(str(JobStatus.RUNNING), Text), now, now),
        )
        .on_conflict_do_nothing()
    )


_JOB_STUBS = _job_stubs_statement()


async def apply_batch(conn: AsyncConnection, events: Sequence[Event]) -> list[str]:
    """Apply events in one transaction (the caller's); returns the jobs this batch finished."""
    return await apply_prepared(conn, prepare_batch(events))


async def apply_prepared(conn: AsyncConnection, batch: PreparedBatch) -> list[str]:
    """Apply a :class:`PreparedBatch` in the caller's transaction; returns the jobs this batch finished."""
    now = datetime.now(UTC)
    if not batch.events:
        return []
    inserted = await conn.execute(
        _RECORD_EVENTS,
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
        columns = _columns([batch.rows[e.event_id] for e in merged])
    for event in sorted(
        (e for e in todo if not isinstance(e, PageCompleted | PageFailed)), key=lambda e: e.occurred_at
    ):
        await _apply_job_event(conn, event, now)
    if merged:
        await _upsert_pages(conn, merged, columns, now)
    touched = sorted({e.job_id for e in todo})
    if not touched:
        return []
    await conn.execute(_COUNT_PAGES, {"touched": touched, "now": now})
    finished = await conn.execute(_END_FINISHED_JOBS, {"touched": touched, "now": now})
    return list(finished.scalars())


def _count_pages_statement() -> Any:
    """Set ``pages_ok`` and ``pages_failed`` of the jobs in ``:touched`` from their page rows."""
    counts = (
        select(
            pages.c.job_id,
            func.count().filter(pages.c.status == PageStatus.COMPLETED).label("ok"),
            func.count().filter(pages.c.status == PageStatus.FAILED).label("failed"),
        )
        .where(pages.c.job_id == any_(_TOUCHED))
        .group_by(pages.c.job_id)
        .subquery()
    )
    return (
        update(jobs)
        .where(jobs.c.job_id == counts.c.job_id)
        .values(pages_ok=counts.c.ok, pages_failed=counts.c.failed, updated_at=_NOW)
    )


def _end_finished_jobs_statement() -> Any:
    """End the jobs in ``:touched`` that have a final row for every page; returns their ids.

    A job ends when every page has a final row; one that ended with errors and then had
    its failed pages redone (a replay) ends again, as completed.
    """
    main_page_error = (
        select(pages.c.error_code)
        .where(pages.c.job_id == jobs.c.job_id, pages.c.status == PageStatus.FAILED)
        .group_by(pages.c.error_code)
        .order_by(func.count().desc(), pages.c.error_code)
        .limit(1)
        .scalar_subquery()
    )
    return (
        update(jobs)
        .where(
            jobs.c.job_id == any_(_TOUCHED),
            or_(
                jobs.c.status.in_(_ACTIVE),
                and_(jobs.c.status == JobStatus.COMPLETED_WITH_ERRORS, jobs.c.pages_failed == 0),
            ),
            jobs.c.total_pages.is_not(None),
            jobs.c.pages_ok + jobs.c.pages_failed >= jobs.c.total_pages,
        )
        .values(
            status=case((jobs.c.pages_failed > 0, JobStatus.COMPLETED_WITH_ERRORS), else_=JobStatus.COMPLETED),
            # A job that ended with errors names the commonest page error, so the row says why.
            error_code=case((jobs.c.pages_failed > 0, main_page_error), else_=None),
            finished_at=_NOW,
            updated_at=_NOW,
            completion_published_at=None,
        )
        .returning(jobs.c.job_id)
    )


_COUNT_PAGES = _count_pages_statement()
_END_FINISHED_JOBS = _end_finished_jobs_statement()


ECHO_WAIT_S = 60.0
"""How long the sweep leaves a job whose completion this recorder published before it publishes it again
(with the same event id): its ``JobCompleted`` comes back through the recorder's queue to mark the row."""


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError | OSError | ConnectionError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


@dataclass(frozen=True)
class _Ready:
    """A batch's messages and its events prepared, waiting for its transaction."""

    messages: list[AbstractIncomingMessage]
    prepared: PreparedBatch


FINISHING_AT_ONCE = 2
"""Jobs finished at a time. Each holds a database connection while it assembles and stores its
results: with more than the pool keeps (:func:`recorder_engine`) beside the batch's, the rest
open connections of their own and close them after one job (a PostgreSQL backend each): 100
one-page jobs in a row opened 43 sessions, and 3 to 8 two at a time (``pagewire bench`` on one file)."""


class Recorder:
    """Batches events from the recorder queue into PostgreSQL and finishes jobs."""

    def __init__(self, settings: RecorderSettings, db: AsyncEngine, publisher: Publisher, storage: Storage) -> None:
        self.settings = settings
        self.db = db
        self.publisher = publisher
        self.storage = storage
        self.inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self.finishing: set[str] = set()
        self.announced: dict[str, float] = {}
        """Jobs whose ``JobCompleted`` this recorder published (monotonic time), until it is applied."""
        self.background: set[asyncio.Task[None]] = set()
        self.finish_slots = asyncio.Semaphore(FINISHING_AT_ONCE)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        await self.inbox.put(message)

    async def _gather(self) -> list[AbstractIncomingMessage]:
        """The next batch: events until ``batch_wait_ms`` pass without one, ``batch_max_wait_ms`` after
        the first, or ``batch_size`` of them.

        A lone event is applied ``batch_wait_ms`` after it came. A steady stream (a
        worker's pages, a few milliseconds apart) fills a batch for up to
        ``batch_max_wait_ms``: each transaction costs some eight statements whatever
        its size, and at 20 ms a batch such a stream made batches of about 7 events.
        """
        loop = asyncio.get_running_loop()
        batch = [await self.inbox.get()]
        deadline = loop.time() + self.settings.batch_max_wait_ms / 1000
        gap = self.settings.batch_wait_ms / 1000
        while len(batch) < self.settings.batch_size:
            timeout = min(gap, deadline - loop.time())
            if timeout <= 0 and self.inbox.empty():
                break
            try:
                batch.append(await asyncio.wait_for(self.inbox.get(), max(timeout, 0)))
            except TimeoutError:
                break
        return batch

    async def process(self, batch: list[AbstractIncomingMessage]) -> None:
        """Apply one batch (retrying the database until it answers), then ack it."""
        await self.apply(await self.prepare(batch))

    async def prepare(self, batch: list[AbstractIncomingMessage]) -> _Ready:
        """Parse a batch and make its rows; a body that is no event goes to the dead-letter queue now."""
        prepared, poison = await prepare_bodies([m.body for m in batch], self.settings.max_message_bytes)
        for index, exc in poison.items():
            await self.publisher.dead_letter(batch[index], exc, self.settings.topology.recorder_queue)
            await ack(batch[index])
        return _Ready(batch, prepared)

    async def apply(self, ready: _Ready) -> None:
        """Apply a prepared batch in one transaction, retrying the database until it answers; then ack it."""
        delay = 0.2
        started = time.perf_counter()
        while True:
            try:
                async with self.db.begin() as conn:
                    finished = await apply_prepared(conn, ready.prepared)
                break
            except Exception as exc:
                if not _is_transient(exc):
                    raise
                log.warning("database unavailable (%s); retrying in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.db_retry_max_s)
        metrics.RECORDER_APPLY_SECONDS.observe(time.perf_counter() - started)
        received = ready.prepared.received
        metrics.RECORDER_BATCH_EVENTS.observe(sum(received.values()))
        for type_, count in received.items():
            metrics.RECORDER_EVENTS.labels(type=type_).inc(count)
        # One ack for the batch: every earlier delivery was settled by the batches before it.
        await ack_all(ready.messages)
        log.debug("applied %s events", sum(received.values()))
        for applied in ready.prepared.events:
            if isinstance(applied, JobCompleted):
                self.announced.pop(applied.job_id, None)
        for job_id in finished:
            self._finish_later(job_id)

    def _finish_later(self, job_id: str) -> None:
        if job_id in self.finishing:
            return
        self.finishing.add(job_id)
        task = asyncio.create_task(self._finish(job_id))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _finish(self, job_id: str) -> None:
        try:
            async with self.finish_slots:
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
            rows = (
                await conn.execute(select(pages).where(pages.c.job_id == job_id).order_by(pages.c.page_no))
            ).mappings()
            page_rows = [
                PageRow(
                    page_no=r["page_no"],
                    status=r["status"],
                    engine=r["engine"],
                    text=r["text"],
                    blocks=r["blocks"],
                    confidence=r["confidence"],
                    error_code=r["error_code"],
                    error_message=r["error_message"],
                )
                for r in rows
            ]
            formats = (job["options"] or {}).get("output_formats") or [OutputFormat.MD, OutputFormat.JSON]
            bucket = self.settings.s3_bucket
            keys: dict[str, str] = {}
            for fmt in formats:
                key = result_key(job_id, str(fmt))
                if fmt == OutputFormat.MD:
                    body, content_type = assemble_markdown(page_rows).encode(), "text/markdown; charset=utf-8"
                else:
                    body, content_type = assemble_json(dict(job), page_rows).encode(), "application/json"
                await asyncio.to_thread(self.storage.put_bytes, bucket, key, body, content_type)
                keys[str(fmt)] = key
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
            announced = self.announced.get(job_id)
            if announced is not None and now - announced < ECHO_WAIT_S:
                continue  # published; its JobCompleted has not come back to be applied yet
            self.announced.pop(job_id, None)
            self._finish_later(job_id)

    async def sweep_forever(self, every_s: float = 5.0) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("sweep failed (%s); next in %s s", exc, every_s)
            await asyncio.sleep(every_s)

    async def batches_forever(self) -> None:
        """Apply batches one at a time, in order, each prepared while the one before it is applied."""
        await pipelined(self._batches(), self.prepare, self.apply)

    async def _batches(self) -> AsyncIterator[list[AbstractIncomingMessage]]:
        while True:
            yield await self._gather()


async def run(settings: RecorderSettings, grace_s: float = 30.0, stopper: Stopper | None = None) -> None:
    """``pagewire recorder``: record events until SIGTERM."""
    stopper = stopper or Stopper()
    stopper.install()
    collect_less_often()
    health = metrics.Health("recorder")
    async with metrics.serving(settings.metrics_port, health, settings.metrics_host):
        await _run(settings, grace_s, stopper, health)
    log.info("recorder stopped")


async def _run(settings: RecorderSettings, grace_s: float, stopper: Stopper, health: metrics.Health) -> None:
    db = recorder_engine(settings.database_url.get_secret_value())
    connection = await connect(settings, "recorder")
    health.watch(connection)
    try:
        publisher = await Publisher.open(connection, settings.topology)
        recorder = Recorder(settings, db, publisher, Storage(settings))
        channel = await connection.channel()
        # Two batches unacked: the next batch gathers and is prepared while one is in its
        # transaction (batches_forever). With one batch's worth, nothing more would arrive
        # until the batch in PostgreSQL is acked, and the two could not overlap.
        await channel.set_qos(prefetch_count=2 * settings.batch_size)
        queue = await get_queue(channel, settings.topology.recorder_queue)
        batcher = asyncio.create_task(recorder.batches_forever())
        sweeper = asyncio.create_task(recorder.sweep_forever())
        tag = await queue.consume(recorder.on_message)
        health.set_ready(True)
        log.info("recorder consuming %s (batch %s)", settings.topology.recorder_queue, settings.batch_size)
        stop = asyncio.create_task(stopper.event.wait())
        await asyncio.wait({stop, batcher}, return_when=asyncio.FIRST_COMPLETED)
        if batcher.done():
            batcher.result()  # a fatal error: raise it
        health.set_ready(False, "draining")
        await queue.cancel(tag)
        # Messages already delivered but not applied go back to the queue when the channel closes.
        batcher.cancel()
        sweeper.cancel()
        if recorder.background:
            await asyncio.wait(set(recorder.background), timeout=grace_s)
    finally:
        await close(connection)
        await db.dispose()
