"""``pagewire jobs`` lists recent jobs; ``pagewire gc`` expires old sources and results.

Listing reads the ``job_progress`` view (with ``jobs.expired_at``), newest
first, filtered by status and age.

Retention: a finished job's objects (its source, when pagewire owns it, and
its result files) are deleted when the job is too old, or when keeping it
would pass the count or size limit; limits are set by
``PAGEWIRE_RETENTION_MAX_AGE``, ``PAGEWIRE_RETENTION_MAX_JOBS`` and
``PAGEWIRE_RETENTION_MAX_BYTES`` (0: no limit) or the command's flags. The
rules:

- only terminal jobs (``completed``, ``completed_with_errors``, ``failed``,
  ``cancelled``) expire, and only they count towards the limits: a running
  job is never touched;
- age is counted from ``finished_at``; count and size keep the newest jobs
  that fit, and expire every older one from the first that does not;
- pagewire deletes only what it wrote: ``jobs/{id}/source.pdf`` in
  ``PAGEWIRE_S3_BUCKET`` (from ``pagewire submit``), the drop folder's
  ``processed/``/``failed/`` copy (named in ``dropfolder_claims``), and the
  result files. A source your own service put elsewhere is never deleted;
- objects go first, then, in one transaction, the job's ``pages`` rows (they
  hold the same text) and ``jobs.expired_at`` is set. The ``jobs`` row stays
  with its counters and error code, and a ``job_tombstones`` row makes the
  recorder drop any later event of the job. A run that dies between the two
  is finished by the next one (deleting a missing object is fine);
- then the ``applied_events`` rows of every job with a tombstone (deleted or
  expired) go: the tombstone keeps their events out;
- ``job_plans`` rows stay: they are how the planner knows an id was used, so a
  request that reuses the id of a deleted or expired job is not planned again.

Sizes (for the size limit and the report) come from listings of the
prefixes the objects live under, a thousand objects per request, not one
HEAD per object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from adapters.signals import Stopper
from adapters.storage import Storage
from producer.output import EXIT_OK, EXIT_USAGE, LIST_FIELDS, integer, jsonable, seconds
from schemas.messages import OutputFormat
from schemas.s3keys import source_key
from schemas.settings import ClientSettings, Settings
from schemas.tables import TERMINAL_JOB_STATUSES, JobStatus, TombstoneReason

log = logging.getLogger(__name__)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``1h``, ``2d`` or ``1w``."""
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value.lower())
    if match is None:
        raise ValueError(f"not a duration: {value!r} (try 90s, 15m, 1h, 2d, 1w)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def duration(text: str) -> float:
    """An argparse type: :func:`parse_duration`, refused as a usage error."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


Duration = Annotated[float, BeforeValidator(parse_duration)]


class RetentionSettings(Settings):
    """``pagewire gc``: when finished jobs' sources and results are deleted."""

    retention_max_age: Duration = Field(default=0.0, ge=0, description="e.g. 30d; 0: no age limit")
    retention_max_jobs: int = Field(default=0, ge=0, description="finished jobs kept; 0: no count limit")
    retention_max_bytes: int = Field(default=0, ge=0, description="bytes of objects kept; 0: no size limit")


# --- listing ---------------------------------------------------------------------------


async def list_jobs(
    db: AsyncEngine, *, statuses: Sequence[str] = (), since_s: float | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """Recent jobs, newest first. ``expired`` as a status means jobs whose objects were deleted."""
    where = ["TRUE"]
    params: dict[str, Any] = {"limit": limit}
    plain = [s for s in statuses if s != "expired"]
    either = []
    if plain:
        either.append("p.status = ANY(:statuses)")
        params["statuses"] = plain
    if "expired" in statuses:
        either.append("j.expired_at IS NOT NULL")
    if either:
        where.append(f"({' OR '.join(either)})")
    if since_s is not None:
        where.append("p.created_at >= now() - make_interval(secs => :since)")
        params["since"] = since_s
    query = text(
        "SELECT p.job_id, p.status, p.total_pages, p.pages_done, p.percent, p.pages_per_second, p.error_code,"
        " p.source_key, j.submitted_by, p.created_at, p.finished_at, j.expired_at,"
        # The name the file had: an upload's or submit's, else the drop-folder key's or source key's last part.
        " coalesce(j.metadata->>'filename', regexp_replace(coalesce(j.metadata->>'dropfolder_key', p.source_key),"
        " '^.*/', '')) AS filename"
        " FROM job_progress p JOIN jobs j USING (job_id)"
        f" WHERE {' AND '.join(where)} ORDER BY p.created_at DESC, p.job_id LIMIT :limit"
    )
    async with db.connect() as conn:
        rows = (await conn.execute(query, params)).mappings().all()
    return [{name: row[name] for name in LIST_FIELDS} for row in rows]


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "-"
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _short(name: str, width: int = 32) -> str:
    """A file name cut to fit a column: its end kept, where the distinguishing part usually is."""
    return name if len(name) <= width else "..." + name[-(width - 3) :]


def format_table(rows: Sequence[dict[str, Any]], now: datetime | None = None) -> str:
    """The rows as an aligned text table for people."""
    now = now or datetime.now(UTC)
    # FILE last: scripts that read the columns before it by position keep working.
    header = ("JOB", "STATUS", "PAGES", "%", "CREATED", "ERROR", "FILE")
    lines = [header]
    for row in rows:
        status = str(row["status"]) + (" (expired)" if row["expired_at"] else "")
        total = row["total_pages"]
        pages = f"{row['pages_done'] or 0}/{total}" if total is not None else "-"
        percent = "-" if row["percent"] is None else f"{float(row['percent']):g}"
        name = _short(row.get("filename") or "-")
        created = _ago(row["created_at"], now)
        lines.append((row["job_id"], status, pages, percent, created, row["error_code"] or "", name))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines)


async def _jobs_command(args: argparse.Namespace) -> int:
    settings = Settings()
    statuses = [s for arg in args.status for s in arg.split(",") if s]
    unknown = set(statuses) - {*JobStatus, "expired"}
    if unknown:
        print(f"pagewire jobs: unknown status {', '.join(sorted(unknown))}", file=sys.stderr)
        return EXIT_USAGE
    since = parse_duration(args.since) if args.since else None
    client_settings = ClientSettings(api_url=args.api) if getattr(args, "api", None) else ClientSettings()
    if client_settings.api_url:
        from producer.http_client import HttpClient

        async with HttpClient(client_settings) as http:
            rows = await http.list_jobs(statuses=statuses, since_s=since, limit=args.limit)
    else:
        db = create_async_engine(settings.database_url.get_secret_value(), pool_size=1)
        try:
            rows = await list_jobs(db, statuses=statuses, since_s=since, limit=args.limit)
        finally:
            await db.dispose()
    if args.json:
        for row in rows:
            print(json.dumps({k: jsonable(v) for k, v in row.items()}))
    elif rows:
        print(format_table(rows))
    return EXIT_OK


# --- retention -----------------------------------------------------------------------------


@dataclass
class Candidate:
    """A finished job that may expire, with the objects pagewire owns for it."""

    job_id: str
    status: str
    finished_at: datetime
    objects: list[tuple[str, str]] = field(default_factory=list)  # (bucket, key)
    bytes: int = 0
    reason: str | None = None  # why it expires: age, count or size


@dataclass
class GcReport:
    """What one run expired (or would, with ``--dry-run``) and what it kept."""

    dry_run: bool
    expired: list[Candidate] = field(default_factory=list)
    kept_jobs: int = 0
    kept_bytes: int = 0

    @property
    def freed_bytes(self) -> int:
        return sum(c.bytes for c in self.expired)


def choose(
    candidates: Sequence[Candidate], now: datetime, *, max_age_s: float, max_jobs: int, max_bytes: int
) -> tuple[list[Candidate], list[Candidate]]:
    """Split finished jobs (any order) into (expire, keep); sets each expiring one's ``reason``.

    Newest first: a job older than ``max_age_s`` expires; past ``max_jobs``
    kept, or once the kept bytes would pass ``max_bytes``, it and every older
    one expire. 0 means no limit.
    """
    expire: list[Candidate] = []
    keep: list[Candidate] = []
    kept_bytes = 0
    full = False
    for candidate in sorted(candidates, key=lambda c: (c.finished_at, c.job_id), reverse=True):
        if max_age_s and (now - candidate.finished_at).total_seconds() > max_age_s:
            candidate.reason = "age"
        elif max_jobs and len(keep) >= max_jobs:
            candidate.reason = "count"
        elif max_bytes and (full or kept_bytes + candidate.bytes > max_bytes):
            candidate.reason = "size"
            full = True  # keep the newest that fit, not older ones that squeeze in after a big one
        else:
            keep.append(candidate)
            kept_bytes += candidate.bytes
            continue
        expire.append(candidate)
    return expire, keep


async def load_candidates(db: AsyncEngine, settings: Settings) -> list[Candidate]:
    """Every terminal, unexpired job with the objects pagewire owns for it."""
    query = text(
        "SELECT j.job_id, j.status, coalesce(j.finished_at, j.updated_at) AS finished_at, j.source_bucket,"
        " j.source_key, j.result_bucket, j.result_keys, c.bucket AS claim_bucket, c.target_key"
        " FROM jobs j LEFT JOIN dropfolder_claims c ON c.job_id = j.job_id"
        " WHERE j.expired_at IS NULL AND j.status = ANY(:terminal)"
    )
    async with db.connect() as conn:
        rows = (await conn.execute(query, {"terminal": sorted(TERMINAL_JOB_STATUSES)})).mappings().all()
    candidates = []
    for row in rows:
        objects: list[tuple[str, str]] = []
        source = (row["source_bucket"], row["source_key"])
        if source == (settings.s3_bucket, source_key(row["job_id"])) or source == (
            row["claim_bucket"],
            row["target_key"],
        ):
            objects.append(source)
        for fmt in OutputFormat:
            key = (row["result_keys"] or {}).get(str(fmt))
            if row["result_bucket"] and key:
                objects.append((row["result_bucket"], key))
        candidates.append(Candidate(row["job_id"], row["status"], row["finished_at"], objects))
    return candidates


def measure(storage: Storage, candidates: Sequence[Candidate]) -> None:
    """Fill in each candidate's bytes from listings of the prefixes its objects live under. Blocking."""
    prefixes: set[tuple[str, str]] = set()
    for candidate in candidates:
        for bucket, key in candidate.objects:
            # jobs/{id}/result.md -> jobs/; processed/{id}/x.pdf -> processed/: one listing serves every job.
            cut = key.find(candidate.job_id)
            prefixes.add((bucket, key[:cut] if cut >= 0 else key))
    sizes: dict[tuple[str, str], int] = {}
    paginator = storage.client.get_paginator("list_objects_v2")
    for bucket, prefix in sorted(prefixes):
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                sizes[(bucket, item["Key"])] = int(item.get("Size", 0))
    for candidate in candidates:
        candidate.bytes = sum(sizes.get(obj, 0) for obj in candidate.objects)


async def bury(conn: AsyncConnection, job_ids: Sequence[str], reason: TombstoneReason) -> None:
    """Leave a tombstone for each job, in the caller's transaction: the recorder drops their events from now on.

    Without one, an event still on its way (a task in flight, a redelivery, a replay) would
    bring back pages of an expired job, or a row for a deleted one.
    """
    await conn.execute(
        text(
            "INSERT INTO job_tombstones (job_id, reason, buried_at)"
            " SELECT unnest(CAST(:ids AS text[])), :reason, now() ON CONFLICT DO NOTHING"
        ),
        {"ids": list(job_ids), "reason": str(reason)},
    )


async def forget_applied_events(conn: AsyncConnection) -> int:
    """Delete the ``applied_events`` rows of every job with a tombstone; how many.

    The tombstone keeps their events out (a redelivered one is dropped before the inbox is
    consulted), so these rows only take space. One pass over the table a run, with a hash
    of the tombstones: the table has no index on ``job_id``, on purpose (the recorder writes
    a row an event).
    """
    result = await conn.execute(text("DELETE FROM applied_events a USING job_tombstones t WHERE a.job_id = t.job_id"))
    return int(getattr(result, "rowcount", 0) or 0)


def delete_objects(storage: Storage, objects: Sequence[tuple[str, str]]) -> None:
    """Delete, a thousand keys a request; a key already gone is fine. Blocking."""
    by_bucket: dict[str, list[str]] = {}
    for bucket, key in objects:
        by_bucket.setdefault(bucket, []).append(key)
    for bucket, keys in by_bucket.items():
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            response = storage.client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
            )
            errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                raise RuntimeError(f"could not delete {len(errors)} objects in {bucket}: {errors[0]}")


async def collect_garbage(
    settings: RetentionSettings,
    *,
    dry_run: bool = False,
    db: AsyncEngine | None = None,
    now: datetime | None = None,
) -> GcReport:
    """One retention run: choose the jobs to expire, delete their objects, leave tombstones."""
    own_db = db is None
    engine = db or create_async_engine(settings.database_url.get_secret_value(), pool_size=1)
    storage = Storage(settings)
    try:
        candidates = await load_candidates(engine, settings)
        await asyncio.to_thread(measure, storage, candidates)
        expire, keep = choose(
            candidates,
            now or datetime.now(UTC),
            max_age_s=settings.retention_max_age,
            max_jobs=settings.retention_max_jobs,
            max_bytes=settings.retention_max_bytes,
        )
        report = GcReport(dry_run, expire, len(keep), sum(c.bytes for c in keep))
        if dry_run or not expire:
            return report
        # Objects first: a crash after this leaves jobs the next run expires again, never orphan objects.
        await asyncio.to_thread(delete_objects, storage, [o for c in expire for o in c.objects])
        ids = [c.job_id for c in expire]
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM pages WHERE job_id = ANY(:ids)"), {"ids": ids})
            await conn.execute(
                text("UPDATE jobs SET expired_at = now(), updated_at = now() WHERE job_id = ANY(:ids)"), {"ids": ids}
            )
            await bury(conn, ids, TombstoneReason.EXPIRED)
        async with engine.begin() as conn:
            await forget_applied_events(conn)
        for candidate in expire:
            log.info("expired job %s (%s, %s bytes)", candidate.job_id, candidate.reason, candidate.bytes)
        return report
    finally:
        if own_db:
            await engine.dispose()


def _print_report(report: GcReport, as_json: bool) -> None:
    verb = "would expire" if report.dry_run else "expired"
    if as_json:
        body = {
            "dry_run": report.dry_run,
            "expired": [
                {"job_id": c.job_id, "reason": c.reason, "bytes": c.bytes, "objects": len(c.objects)}
                for c in report.expired
            ],
            "freed_bytes": report.freed_bytes,
            "kept_jobs": report.kept_jobs,
            "kept_bytes": report.kept_bytes,
        }
        print(json.dumps(body), flush=True)
        return
    for c in report.expired:
        print(f"{verb} {c.job_id} ({c.reason}, {c.bytes} bytes, {len(c.objects)} objects)")
    print(f"{verb} {len(report.expired)} jobs ({report.freed_bytes} bytes); kept {report.kept_jobs}", flush=True)


async def _gc_command(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.max_age is not None:
        overrides["retention_max_age"] = parse_duration(args.max_age)
    if args.max_jobs is not None:
        overrides["retention_max_jobs"] = args.max_jobs
    if args.max_bytes is not None:
        overrides["retention_max_bytes"] = args.max_bytes
    settings = RetentionSettings().model_copy(update=overrides)
    if not (settings.retention_max_age or settings.retention_max_jobs or settings.retention_max_bytes):
        print("pagewire gc: no limit set (PAGEWIRE_RETENTION_MAX_* or --max-*): nothing would expire", file=sys.stderr)
        return EXIT_USAGE
    if not args.every:
        _print_report(await collect_garbage(settings, dry_run=args.dry_run), args.json)
        return EXIT_OK
    stopper = Stopper()
    stopper.install()
    while not stopper.event.is_set():
        try:
            _print_report(await collect_garbage(settings, dry_run=args.dry_run), args.json)
        except Exception:
            # A periodic run survives a bad round (a service away); the next round tries again.
            log.exception("retention run failed; trying again in %ss", args.every)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopper.event.wait(), args.every)
    return EXIT_OK


def add_parser(subparsers: Any) -> None:
    """Add ``pagewire jobs`` and ``pagewire gc`` to the CLI's subparsers."""
    p = subparsers.add_parser(
        "jobs",
        help="recent jobs, newest first",
        description="List recent jobs from the status table, newest first.",
    )
    p.add_argument(
        "--status",
        action="append",
        default=[],
        metavar="S",
        help="only this status (repeatable or comma-separated): queued, running, completed,"
        " completed_with_errors, failed, cancelled, expired",
    )
    p.add_argument("--since", type=duration, metavar="AGE", help="only jobs created within AGE: 90s, 15m, 1h, 2d, 1w")
    p.add_argument("--limit", type=integer(1), default=20, metavar="N", help="at most N jobs (20)")
    p.add_argument("--json", action="store_true", help="one JSON object per job and line")
    p.set_defaults(func=_jobs_command)

    p = subparsers.add_parser(
        "gc",
        help="delete finished jobs' sources and results by age, count and size",
        description="Expire finished jobs past the retention limits: their objects are deleted, the job row"
        " stays as a tombstone (expired_at). Limits: PAGEWIRE_RETENTION_MAX_AGE/_JOBS/_BYTES or the flags.",
    )
    p.add_argument("--dry-run", action="store_true", help="show what would expire, delete nothing")
    p.add_argument(
        "--max-age", type=duration, metavar="AGE", help="expire jobs finished longer ago than AGE (30d, 12h, ...)"
    )
    p.add_argument("--max-jobs", type=integer(0), metavar="N", help="keep the newest N finished jobs")
    p.add_argument(
        "--max-bytes", type=integer(0), metavar="BYTES", help="keep the newest jobs whose objects fit in BYTES"
    )
    p.add_argument("--every", type=seconds, metavar="S", help="run every S seconds until SIGTERM")
    p.add_argument("--json", action="store_true", help="print each run's report as one JSON line")
    p.set_defaults(func=_gc_command)
