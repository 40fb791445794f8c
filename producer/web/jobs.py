"""What the HTTP gateway reads from the status tables, and the few things it writes.

The gateway is a reader of ``jobs`` and ``pages`` (the recorder is their only
writer) with one exception: ``DELETE /jobs/{id}`` removes a finished job, its
S3 objects first and then its row (its pages go by ``ON DELETE CASCADE``, its
``job_owners`` row by a trigger). ``job_owners`` is the gateway's own: a row
per job queued over HTTP, written before the job is uploaded or published.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.storage import Storage
from producer.jobs import bury
from schemas.errors import ErrorCode, PermanentError
from schemas.tables import JobStatus, TombstoneReason, job_owners, jobs, pages

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

PAGE_FIELDS = ("page_no", "status", "engine", "confidence", "duration_ms", "attempts", "error_code", "error_message")
DONE_PAGE_STATUSES = frozenset({"completed", "failed"})

_JOBS_AND_OWNERS = jobs.outerjoin(job_owners, job_owners.c.job_id == jobs.c.job_id)
_SUMMARY_COLUMNS = (
    jobs.c.job_id,
    jobs.c.status,
    jobs.c.total_pages,
    jobs.c.pages_ok,
    jobs.c.pages_failed,
    jobs.c.error_code,
    jobs.c.error_message,
    jobs.c.source_bucket,
    jobs.c.source_key,
    jobs.c.options,
    jobs.c.priority,
    jobs.c.submitted_by,
    job_owners.c.owner,
    jobs.c.metadata,
    jobs.c.result_bucket,
    jobs.c.result_keys,
    jobs.c.created_at,
    jobs.c.started_at,
    jobs.c.finished_at,
    jobs.c.expired_at,
)


def summarise(row: Any, now: datetime | None = None) -> dict[str, Any]:
    """A ``jobs`` row as the API shows it, with the progress figures of the ``job_progress`` view."""
    data = dict(row._mapping)
    done = data["pages_ok"] + data["pages_failed"]
    total = data["total_pages"]
    data["pages_done"] = done
    data["percent"] = round(100.0 * done / total, 1) if total else None
    data["pages_per_second"] = None
    if data["started_at"] is not None:
        elapsed = ((data["finished_at"] or now or datetime.now(UTC)) - data["started_at"]).total_seconds()
        if elapsed > 0:
            data["pages_per_second"] = round(done / elapsed, 2)
    return data


def encode_cursor(created_at: datetime, job_id: str) -> str:
    """An opaque page token: the sort key of the last row of the page."""
    raw = json.dumps([created_at.isoformat(), job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The sort key inside a page token; a token that is not one of ours is ``malformed_message``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = json.loads(raw)
        return datetime.fromisoformat(created_at), str(job_id)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise PermanentError(ErrorCode.MALFORMED_MESSAGE, "cursor is not one this service gave out") from exc


@dataclass(frozen=True)
class JobFilter:
    """Filters of ``GET /jobs``; every one is optional."""

    statuses: tuple[JobStatus, ...] = ()
    submitted_by: str | None = None
    owner: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


async def list_jobs(
    db: AsyncEngine, where: JobFilter, *, limit: int, cursor: str | None, owned_by: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first, ``limit`` a page; returns the rows and the token of the next page (None at the end).

    ``owned_by``: a key's name, that key's jobs only; None: every job (an admin).
    Keyset pagination on ``(created_at, job_id)``, so a page stays right while
    new jobs arrive at the top.
    """
    query = select(*_SUMMARY_COLUMNS).select_from(_JOBS_AND_OWNERS)
    if owned_by is not None:
        query = query.where(job_owners.c.owner == owned_by)
    if where.owner is not None:
        query = query.where(job_owners.c.owner == where.owner)
    if where.statuses:
        query = query.where(jobs.c.status.in_([str(s) for s in where.statuses]))
    if where.submitted_by is not None:
        query = query.where(jobs.c.submitted_by == where.submitted_by)
    if where.created_after is not None:
        query = query.where(jobs.c.created_at > where.created_after)
    if where.created_before is not None:
        query = query.where(jobs.c.created_at < where.created_before)
    if cursor:
        created_at, job_id = decode_cursor(cursor)
        query = query.where(
            or_(jobs.c.created_at < created_at, and_(jobs.c.created_at == created_at, jobs.c.job_id < job_id))
        )
    query = query.order_by(jobs.c.created_at.desc(), jobs.c.job_id.desc()).limit(limit + 1)
    async with db.connect() as conn:
        rows = (await conn.execute(query)).all()
    now = datetime.now(UTC)
    page = [summarise(r, now) for r in rows[:limit]]
    next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["job_id"]) if len(rows) > limit else None
    return page, next_cursor


async def get_job(db: AsyncEngine, job_id: str) -> dict[str, Any] | None:
    """The job's summary, or None when there is no such row."""
    async with db.connect() as conn:
        query = select(*_SUMMARY_COLUMNS).select_from(_JOBS_AND_OWNERS).where(jobs.c.job_id == job_id)
        row = (await conn.execute(query)).first()
    return summarise(row) if row is not None else None


async def get_pages(
    db: AsyncEngine, job_id: str, *, with_text: bool = False, page_nos: list[int] | None = None
) -> list[dict[str, Any]]:
    """The job's page rows in page order (``page_nos``: those only); ``with_text`` adds ``text`` and ``blocks``."""
    columns = [pages.c[name] for name in PAGE_FIELDS]
    if with_text:
        columns += [pages.c.text, pages.c.blocks]
    query = select(*columns).where(pages.c.job_id == job_id).order_by(pages.c.page_no)
    if page_nos is not None:
        query = query.where(pages.c.page_no.in_(page_nos))
    async with db.connect() as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings()]


async def job_exists(db: AsyncEngine, job_id: str) -> bool:
    async with db.connect() as conn:
        count = (await conn.execute(select(func.count()).where(jobs.c.job_id == job_id))).scalar_one()
    return bool(count)


async def claim_job(db: AsyncEngine, job_id: str, owner: str | None) -> bool:
    """Record ``owner`` as the job's; False when another owner claimed the id already (on any gateway).

    The same owner may claim an id again: a submit that failed after its claim
    (S3 or the broker did not answer) can be repeated with the same job id.
    The claim is never given back on failure, because the failure may have come
    after the job was queued, and a queued job must not lose its owner.
    """
    statement = insert(job_owners).values(job_id=job_id, owner=owner, claimed_at=datetime.now(UTC))
    query = statement.on_conflict_do_update(
        index_elements=[job_owners.c.job_id],
        set_={"claimed_at": statement.excluded.claimed_at},
        where=job_owners.c.owner.is_not_distinct_from(statement.excluded.owner),
    ).returning(job_owners.c.job_id)
    async with db.begin() as conn:
        return (await conn.execute(query)).first() is not None


async def fresh_claim(db: AsyncEngine, job_id: str, within_s: float) -> tuple[bool, str | None]:
    """Whether the id was claimed in the last ``within_s`` seconds (by any gateway), and by whom."""
    since = datetime.now(UTC) - timedelta(seconds=within_s)
    query = select(job_owners.c.owner).where(job_owners.c.job_id == job_id, job_owners.c.claimed_at > since)
    async with db.connect() as conn:
        row = (await conn.execute(query)).first()
    return (True, row.owner) if row is not None else (False, None)


async def owner_of(db: AsyncEngine, job_id: str) -> str | None:
    """The name of the key that queued the job over HTTP; None for a job of no key."""
    async with db.connect() as conn:
        owner: str | None = (
            await conn.execute(select(job_owners.c.owner).where(job_owners.c.job_id == job_id))
        ).scalar_one_or_none()
    return owner


def _delete_prefix(storage: Storage, bucket: str, prefix: str) -> int:
    """Delete every object under ``prefix``; returns how many went."""
    deleted = 0
    paginator = storage.client.get_paginator("list_objects_v2")
    for listing in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys: list[ObjectIdentifierTypeDef] = [
            {"Key": item["Key"]} for item in listing.get("Contents", []) if "Key" in item
        ]
        if keys:
            storage.client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            deleted += len(keys)
    return deleted


async def delete_job(db: AsyncEngine, storage: Storage, default_bucket: str, job_id: str) -> int:
    """Delete a job's S3 objects (``jobs/{id}/...``) and then its row; pages cascade.

    S3 goes first: should it fail half way, the row is still there and the
    DELETE can be repeated, where the other order would leave orphans no route
    can reach. A source the job read from elsewhere in S3 is not ours and
    stays. A tombstone (``job_tombstones``) is left in the same transaction: the
    recorder drops every later event of the job, so none can bring it back, and
    ``pagewire gc`` later removes its ``applied_events`` rows. Its ``job_plans``
    row stays, so a request that reuses the id is not planned again.
    """
    async with db.connect() as conn:
        row = (await conn.execute(select(jobs.c.result_bucket).where(jobs.c.job_id == job_id))).first()
    if row is None:
        raise PermanentError(ErrorCode.JOB_NOT_FOUND, f"no job {job_id!r}")
    buckets = {default_bucket, row.result_bucket or default_bucket}
    deleted = 0
    for bucket in sorted(buckets):
        deleted += await asyncio.to_thread(_delete_prefix, storage, bucket, f"jobs/{job_id}/")
    async with db.begin() as conn:
        await bury(conn, [job_id], TombstoneReason.DELETED)
        await conn.execute(delete(jobs).where(jobs.c.job_id == job_id))
    return deleted
