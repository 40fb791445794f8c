"""The recorder's SQL, each statement built once as a constant.

A statement built for each use is walked by SQLAlchemy every time to find its
cached form; as constants they are compiled once and prepared once a
connection. Rows of a batch travel as one array parameter a column
(``unnest``), so the SQL is the same whatever the batch size.
"""

from __future__ import annotations

from typing import Any

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
from sqlalchemy.dialects.postgresql import insert as pg_insert

from consumer.recorder.prepare import JSON_COLUMNS, PAGE_COLUMNS
from schemas.messages import CACHE_WORKER
from schemas.tables import JobStatus, PageStatus, applied_events, job_tombstones, jobs, page_cache, pages

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
"""Job statuses an event may still move on."""


def _rank(column: Any) -> Any:
    """A page status as a number: retrying < failed < completed, as :data:`PAGE_RANK`."""
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
    VALUES of a new size is compiled afresh for each), and one statement rather than
    an executemany of one per row (less CPU on both sides; figures in
    docs/benchmarks.md). JSON columns travel as text already serialised (see
    :func:`consumer.recorder.prepare.page_row`) and are cast to their column's type
    there, where the JSON types would run ``json.dumps`` on every value.
    The rows must have distinct keys, which :func:`merge_page_events` makes sure of.
    """
    batch = _unnest(
        "batch", *[(f"{c.name}_list", c.name, Text() if c.name in JSON_COLUMNS else c.type) for c in pages.columns]
    )
    stmt = pg_insert(pages).from_select(
        PAGE_COLUMNS,
        select(*[cast(batch.c[n], pages.c[n].type) if n in JSON_COLUMNS else batch.c[n] for n in PAGE_COLUMNS]),
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


UPSERT_PAGES = _upsert_pages_statement()


# lz4 for the TOAST values this session writes (a page's boxes and text), where the server
# has it: PostgreSQL's default, pglz, is a large share of PostgreSQL's CPU per event
# (docs/benchmarks.md); lz4 trades a little space for it.
# Only for columns that name no compression of their own; each value records its method, so
# reading is the same either way. Set once a connection (recorder_engine), not once a
# transaction: a round trip a batch less.
LZ4_FOR_THIS_SESSION = (
    "SELECT set_config('default_toast_compression', 'lz4', false) FROM pg_settings"
    " WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)"
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
    wrote), through the primary key: ``event_id`` has no index, and a filter on it alone
    would read the whole ``pages`` table once a batch.
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


FILL_PAGE_CACHE = _fill_page_cache()

# The page cache rows of a job's pages read before its JobStarted named the content hash: the
# planner sends JobStarted after a long document's tasks, and workers may be quicker.
CATCH_UP_PAGE_CACHE = _cache_rows(
    pages,
    pages.c.job_id == bindparam("job_id", type_=Text),
    pages.c.status == PageStatus.COMPLETED,
    pages.c.worker != CACHE_WORKER,
)


# The jobs a batch touched, and its time. The statements of an event and a batch are made once, as constants:
# a statement built for each use is walked by SQLAlchemy every time to find its cached form.
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

    Made once, as every statement here (see ``_TOUCHED``).
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


UPSERT_QUEUED, UPSERT_STARTED = _job_upsert_statement(False), _job_upsert_statement(True)

MARK_COMPLETION_SEEN = (
    update(jobs)
    .where(jobs.c.job_id == bindparam("done_job_id", type_=Text))
    .values(
        result_bucket=bindparam("bucket", type_=Text),
        result_keys=bindparam("result_keys", type_=jobs.c.result_keys.type),
        completion_published_at=func.coalesce(jobs.c.completion_published_at, _NOW),
        updated_at=_NOW,
    )
)


def _record_events_statement() -> Any:
    """Insert the batch's event ids into ``applied_events``, returning those that were not there.

    Events of a job with a tombstone (deleted or expired) are left out, so they are dropped: a
    task still in flight, a redelivery or a replay must not bring such a job back.
    """
    new = _unnest("new_events", ("event_ids", "event_id", Text), ("job_ids", "job_id", Text), ("types", "type", Text))
    buried = select(job_tombstones.c.job_id).where(job_tombstones.c.job_id == new.c.job_id).exists()
    return (
        pg_insert(applied_events)
        .from_select(
            ["event_id", "job_id", "type", "applied_at"],
            select(new.c.event_id, new.c.job_id, new.c.type, bindparam("now", type_=DateTime(timezone=True))).where(
                ~buried
            ),
        )
        .on_conflict_do_nothing()
        .returning(applied_events.c.event_id)
    )


RECORD_EVENTS = _record_events_statement()


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


JOB_STUBS = _job_stubs_statement()


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
                jobs.c.status.in_(ACTIVE),
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


COUNT_PAGES = _count_pages_statement()
END_FINISHED_JOBS = _end_finished_jobs_statement()
