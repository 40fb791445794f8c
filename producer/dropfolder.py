"""The drop folder: every PDF (or image) put under an S3 prefix becomes exactly one job.

``pagewire dropfolder`` lists ``inbox/`` every ``scan_interval_s`` seconds
(and, when ``notify_exchange`` is set, also takes S3 bucket notifications from
RabbitMQ for instant pick-up; the scan stays as the safety net). For each
object it:

1. **waits until the object is ready**: more than zero bytes (a zero-byte
   object is a placeholder some tools write before the content) and last
   modified at least ``min_age_s`` ago, measured on the S3 server's clock
   (the ``Date`` of the listing response), so clock skew between hosts does
   not matter. Why an age and not "the size is stable across two scans": an
   S3 PUT or multipart upload becomes visible only once complete, so an
   object is never seen half written; what can happen is that a tool replaces
   it shortly after (placeholder first, then the content; or an editor saving
   twice). A quiet period catches exactly that, needs no memory between
   scans, and so holds across restarts and between several watchers. A
   bucket notification (sent once an upload is complete) skips the wait;
2. **claims it** in ``dropfolder_claims``, keyed by bucket, key, etag and
   last-modified time: ``INSERT ... ON CONFLICT DO NOTHING`` lets exactly one
   watcher win. The job id is a uuid5 of the same four values, so whoever
   handles the object, now or after a crash, uses the same job id; a re-drop
   of identical bytes under the same name has a new last-modified time, so it
   is a new job;
3. **judges it** from its size and its first bytes (one ranged GET): a PDF
   starts with ``%PDF-`` within its first 1,024 bytes. A PNG, JPEG or TIFF
   image is read whole and made a PDF (a page a frame, ``producer.images``),
   stored as ``processed/{job_id}/{name}.pdf``: that PDF is the job's source
   and the image is not kept; an image that does not decode or is over the
   image limits goes to ``failed/`` with ``bad_image``, ``image_too_large``
   or ``too_many_pages``. Neither a PDF nor an image, or over
   ``PAGEWIRE_MAX_PDF_BYTES``, goes to ``failed/`` at once, with a failed job
   (``JobQueued`` then ``JobFailed``, code ``not_a_pdf`` / ``file_too_large``)
   so it shows in ``pagewire jobs`` with its reason;
4. **copies it** to ``processed/{job_id}/{name}`` (or ``failed/{job_id}/{name}``)
   with ``x-amz-meta-pagewire-job-id``, guarded by ``CopySourceIfMatch`` so a
   version replaced meanwhile is not the one copied. The copy is the job's
   source: the inbox key is about to disappear;
5. **publishes** the ``JobRequest`` and ``JobQueued`` (confirmed) unless the
   claim says it already did or the ``jobs`` table already knows the job, then
   notes ``published_at``;
6. **deletes the inbox object** if it is still the version claimed, and marks
   the claim done.

A watcher that dies mid-object leaves an unfinished claim; once it is older
than ``claim_timeout_s`` another watcher of the same inbox (or the same one
restarted) takes it over and redoes the steps, each of which is idempotent. The one window where a
second ``JobRequest`` can go out is between the broker's confirm and the
``published_at`` update (milliseconds) when the recorder has not yet written
the job row; it carries the same job id, so it is still one job.

S3 cannot delete only if an object is unchanged, so step 6 re-reads the etag
just before deleting: a rewrite landing in those milliseconds would be lost.
On a versioned bucket the delete names the version and that window closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import sys
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter, Gauge
from pydantic import Field, model_validator
from sqlalchemy import and_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from adapters import metrics
from adapters.amqp import Publisher, ack, close, connect
from adapters.signals import Stopper
from adapters.storage import Storage
from producer.images import ImageLimits, image_kind, image_to_pdf, pdf_name
from schemas.errors import ErrorCode, PermanentError
from schemas.fields import clean_name, clean_text
from schemas.messages import Engine, JobFailed, JobOptions, JobQueued, JobRequest, Source, completion_event_id
from schemas.s3keys import validate_bucket, validate_key
from schemas.settings import Settings
from schemas.tables import dropfolder_claims, jobs

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

ROLE = "dropfolder"
PDF_MAGIC = b"%PDF-"
# The PDF reference lets the header sit anywhere in the first 1,024 bytes (pdfium accepts that too).
HEADER_WINDOW = 1024
JOB_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://pagewire/dropfolder")
META_JOB_ID = "pagewire-job-id"
META_INBOX_KEY = "pagewire-inbox-key"
META_ERROR_CODE = "pagewire-error-code"

OBJECTS = Counter(
    "pagewire_dropfolder_objects",
    "Inbox objects a drop-folder watcher finished, by outcome (processed, failed, vanished).",
    ["outcome"],
)
SKIPPED = Counter(
    "pagewire_dropfolder_skipped",
    "Inbox objects left for later in a scan, by reason (empty, young, claimed).",
    ["reason"],
)
LAST_SCAN = Gauge("pagewire_dropfolder_last_scan_timestamp_seconds", "When the last complete inbox scan ended.")


class DropFolderSettings(Settings):
    """The drop-folder watcher: turns PDFs put under an S3 prefix into jobs."""

    inbox_bucket: str | None = Field(default=None, description="bucket to watch; unset: PAGEWIRE_S3_BUCKET")
    inbox_prefix: str = Field(default="inbox/", min_length=1, description="objects under it become jobs")
    processed_prefix: str = Field(default="processed/", min_length=1, description="handed-over PDFs go here")
    failed_prefix: str = Field(default="failed/", min_length=1, description="objects refused at once go here")
    scan_interval_s: float = Field(default=10.0, gt=0, description="seconds between two listings of the inbox")
    min_age_s: float = Field(default=5.0, ge=0, description="an object must be this old (server clock) to be taken")
    claim_timeout_s: float = Field(default=300.0, gt=0, description="an unfinished claim this old is taken over")
    scan_concurrency: int = Field(default=4, ge=1, le=64, description="objects handled at once")
    max_pdf_bytes: int = Field(default=256 * 1024 * 1024, ge=1, description="larger objects go to failed/")
    dropfolder_engine: Engine = Field(default=Engine.AUTO, description="engine option of the jobs it makes")
    dropfolder_dpi: int = Field(default=150, ge=36, le=600, description="dpi option of the jobs it makes")
    image_max_megapixels: float = Field(
        default=50.0, gt=0, description="an image's frames larger than this: image_too_large"
    )
    image_max_pages: int = Field(default=500, ge=1, description="images with more frames: too_many_pages")
    notify_exchange: str | None = Field(
        default=None, description="exchange S3 notifications arrive on (MinIO AMQP target); unset: scan only"
    )
    watcher_name: str = Field(default_factory=lambda: f"{socket.gethostname()}:{ROLE}")

    @model_validator(mode="after")
    def _prefixes_apart(self) -> DropFolderSettings:
        # A target under the inbox would be scanned again: every object would loop forever.
        for name in ("processed_prefix", "failed_prefix"):
            target: str = getattr(self, name)
            if target.startswith(self.inbox_prefix) or self.inbox_prefix.startswith(target):
                raise ValueError(f"{name} {target!r} overlaps inbox_prefix {self.inbox_prefix!r}")
        return self

    @property
    def bucket(self) -> str:
        return self.inbox_bucket or self.s3_bucket

    @property
    def notify_queue(self) -> str:
        return f"{self.prefix}.dropfolder"


# --- the pure core ------------------------------------------------------------------


@dataclass(frozen=True)
class InboxObject:
    """One version of one object in the inbox."""

    bucket: str
    key: str
    size: int
    etag: str
    last_modified: datetime  # whole seconds, UTC: HEAD has no finer resolution than a listing
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict, compare=False)


def same_version(a: InboxObject, b: InboxObject) -> bool:
    """The same version of an object: etag and last-modified time agree."""
    return (a.etag, a.last_modified) == (b.etag, b.last_modified)


def whole_seconds(when: datetime) -> datetime:
    """UTC, truncated to the second: a listing gives milliseconds, HEAD only seconds."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).replace(microsecond=0)


def job_id_for(obj: InboxObject) -> str:
    """The job id of an object version: the same for every watcher, before and after a restart."""
    identity = f"{obj.bucket}\0{obj.key}\0{obj.etag}\0{obj.last_modified.isoformat()}"
    return str(uuid.uuid5(JOB_ID_NAMESPACE, identity))


def skip_reason(obj: InboxObject, server_now: datetime | None, min_age_s: float) -> str | None:
    """Why an object is not taken yet (``empty``, ``young``, ``folder``), or None when it is ready."""
    if obj.key.endswith("/"):
        return "folder"
    if obj.size == 0:
        return "empty"
    if server_now is not None and (server_now - obj.last_modified).total_seconds() < min_age_s:
        return "young"
    return None


def looks_like_pdf(head: bytes) -> bool:
    """True when the header ``%PDF-`` is in the first 1,024 bytes."""
    return PDF_MAGIC in head[:HEADER_WINDOW]


def judge(obj: InboxObject, head: bytes | None, max_pdf_bytes: int) -> PermanentError | None:
    """Why the object cannot be a job (it goes to ``failed/``), or None. ``head`` may be None when too large."""
    if obj.size > max_pdf_bytes:
        return PermanentError(
            ErrorCode.FILE_TOO_LARGE, f"object is {obj.size} bytes, over the limit of {max_pdf_bytes}"
        )
    if head is not None and not looks_like_pdf(head) and image_kind(head) is None:
        return PermanentError(
            ErrorCode.NOT_A_PDF, "the object is neither a PDF (%PDF- header) nor a PNG, JPEG or TIFF image"
        )
    return None


def target_key(prefix: str, job_id: str, inbox_prefix: str, key: str) -> str:
    """``{prefix}{job_id}/{name under the inbox}``; a name that would make a bad key is replaced."""
    name = key[len(inbox_prefix) :] if key.startswith(inbox_prefix) else key.rsplit("/", 1)[-1]
    candidate = f"{prefix}{job_id}/{name}"
    try:
        return validate_key(candidate)
    except PermanentError:
        return f"{prefix}{job_id}/source.pdf"


def notified_keys(body: bytes, bucket: str, inbox_prefix: str) -> list[str]:
    """Inbox keys named by an S3 event notification (MinIO's JSON, the same shape as AWS's).

    Only ``ObjectCreated`` records of ``bucket`` under the inbox count; keys
    arrive URL-encoded (spaces as ``+``). Anything unreadable gives no key: the
    scan will find the object anyway.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return []
    records = data.get("Records") if isinstance(data, dict) else None
    keys: list[str] = []
    for record in records if isinstance(records, list) else []:
        try:
            if not str(record["eventName"]).startswith(("s3:ObjectCreated:", "ObjectCreated:")):
                continue
            if record["s3"]["bucket"]["name"] != bucket:
                continue
            key = urllib.parse.unquote_plus(str(record["s3"]["object"]["key"]))
        except (KeyError, TypeError):
            continue
        if key.startswith(inbox_prefix):
            keys.append(key)
    return keys


# --- S3 ----------------------------------------------------------------------------------


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


_GONE = {"404", "NoSuchKey", "NotFound", "412", "PreconditionFailed"}


class Inbox:
    """The S3 calls of the watcher (blocking; called through ``asyncio.to_thread``)."""

    def __init__(self, storage: Storage) -> None:
        self.client: S3Client = storage.client

    def list(self, bucket: str, prefix: str) -> tuple[list[InboxObject], datetime | None]:
        """Every object under ``prefix``, and the server's time of the first page (for ages)."""
        found: list[InboxObject] = []
        server_now: datetime | None = None
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            if server_now is None:
                date = page.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
                server_now = whole_seconds(parsedate_to_datetime(date)) if date else None
            for item in page.get("Contents", []):
                found.append(
                    InboxObject(
                        bucket=bucket,
                        key=item["Key"],
                        size=int(item.get("Size", 0)),
                        etag=str(item.get("ETag", "")).strip('"'),
                        last_modified=whole_seconds(item["LastModified"]),
                    )
                )
        return found, server_now

    def head(self, bucket: str, key: str) -> InboxObject | None:
        """The object's current version, or None when there is none."""
        try:
            response = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _GONE:
                return None
            raise
        return InboxObject(
            bucket=bucket,
            key=key,
            size=int(response["ContentLength"]),
            etag=str(response.get("ETag", "")).strip('"'),
            last_modified=whole_seconds(response["LastModified"]),
            content_type=response.get("ContentType"),
            metadata=dict(response.get("Metadata", {})),
        )

    def first_bytes(self, obj: InboxObject, count: int) -> bytes | None:
        """The first ``count`` bytes of this version, or None when it changed or went away."""
        try:
            response = self.client.get_object(
                Bucket=obj.bucket, Key=obj.key, Range=f"bytes=0-{count - 1}", IfMatch=obj.etag
            )
        except ClientError as exc:
            if _code(exc) in _GONE:
                return None
            raise
        return response["Body"].read()

    def read(self, obj: InboxObject) -> bytes | None:
        """The whole of this version, or None when it changed or went away."""
        try:
            response = self.client.get_object(Bucket=obj.bucket, Key=obj.key, IfMatch=obj.etag)
        except ClientError as exc:
            if _code(exc) in _GONE:
                return None
            raise
        return response["Body"].read()

    def put(self, bucket: str, key: str, data: bytes, metadata: dict[str, str]) -> str:
        """Store a PDF we made (an image's) at ``key`` with ``metadata``; its etag."""
        response = self.client.put_object(
            Bucket=bucket, Key=key, Body=data, Metadata=metadata, ContentType="application/pdf"
        )
        return str(response.get("ETag", "")).strip('"')

    def copy(self, obj: InboxObject, target: str, metadata: dict[str, str]) -> str | None:
        """Copy this version to ``target`` with ``metadata``; its etag, or None when the source changed or went."""
        try:
            response = self.client.copy_object(
                Bucket=obj.bucket,
                Key=target,
                CopySource={"Bucket": obj.bucket, "Key": obj.key},
                CopySourceIfMatch=obj.etag,
                MetadataDirective="REPLACE",
                Metadata=metadata,
                ContentType=obj.content_type or "application/octet-stream",
            )
        except ClientError as exc:
            if _code(exc) in _GONE:
                return None
            raise
        return str(response.get("CopyObjectResult", {}).get("ETag", "")).strip('"')

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)


# --- the claim table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A row of ``dropfolder_claims``: the object version, its job id and how far handling got."""

    obj: InboxObject
    job_id: str
    published: bool


class Claims:
    """``dropfolder_claims``: who handles which object version, and how far it got."""

    def __init__(self, db: AsyncEngine, watcher: str, timeout_s: float) -> None:
        self.db = db
        self.watcher = watcher
        self.timeout = timedelta(seconds=timeout_s)

    @staticmethod
    def _match(obj: InboxObject) -> Any:
        c = dropfolder_claims.c
        return and_(c.bucket == obj.bucket, c.key == obj.key, c.etag == obj.etag, c.last_modified == obj.last_modified)

    async def claim(self, obj: InboxObject) -> Claim | None:
        """Win the object for this watcher, or None when another watcher has (or had) it."""
        job_id = job_id_for(obj)
        stmt = (
            pg_insert(dropfolder_claims)
            .values(
                bucket=obj.bucket,
                key=obj.key,
                etag=obj.etag,
                last_modified=obj.last_modified,
                job_id=job_id,
                claimed_by=self.watcher,
                claimed_at=datetime.now(UTC),
            )
            .on_conflict_do_nothing()
            .returning(dropfolder_claims.c.job_id)
        )
        async with self.db.begin() as conn:
            won = (await conn.execute(stmt)).scalar_one_or_none()
        return Claim(obj, job_id, published=False) if won else None

    async def take_over_stale(self, bucket: str, inbox_prefix: str, limit: int = 100) -> list[Claim]:
        """Unfinished claims older than the timeout in this inbox, now this watcher's (a watcher died mid-object).

        Watchers of other inboxes share the table; their claims are theirs to finish, with their own
        prefixes and job options.
        """
        c = dropfolder_claims.c
        now = datetime.now(UTC)
        # One UPDATE: two watchers sweeping at once cannot both take the same row.
        stale = (
            select(c.bucket, c.key, c.etag, c.last_modified)
            .where(
                c.bucket == bucket,
                c.key.startswith(inbox_prefix, autoescape=True),
                c.done_at.is_(None),
                c.claimed_at < now - self.timeout,
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(dropfolder_claims)
            .where(
                c.done_at.is_(None),
                c.claimed_at < now - self.timeout,
                tuple_(c.bucket, c.key, c.etag, c.last_modified).in_(stale),
            )
            .values(claimed_by=self.watcher, claimed_at=now)
            .returning(c.bucket, c.key, c.etag, c.last_modified, c.job_id, c.published_at)
        )
        async with self.db.begin() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            Claim(
                InboxObject(r.bucket, r.key, -1, r.etag, whole_seconds(r.last_modified)),
                r.job_id,
                published=r.published_at is not None,
            )
            for r in rows
        ]

    async def job_known(self, job_id: str) -> bool:
        """True when the recorder already has the job (its JobQueued went out before a crash)."""
        async with self.db.connect() as conn:
            found = await conn.execute(select(jobs.c.job_id).where(jobs.c.job_id == job_id))
            return found.first() is not None

    async def mark_published(self, obj: InboxObject) -> None:
        async with self.db.begin() as conn:
            await conn.execute(update(dropfolder_claims).where(self._match(obj)).values(published_at=datetime.now(UTC)))

    async def finish(self, obj: InboxObject, outcome: str, target: str | None, error_code: str | None) -> None:
        async with self.db.begin() as conn:
            await conn.execute(
                update(dropfolder_claims)
                .where(self._match(obj))
                .values(done_at=datetime.now(UTC), outcome=outcome, target_key=target, error_code=error_code)
            )


# --- the watcher ------------------------------------------------------------------------


@dataclass
class ScanReport:
    """What one scan did, for logs and tests."""

    seen: int = 0
    handled: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def count(self, table: dict[str, int], name: str) -> None:
        table[name] = table.get(name, 0) + 1


class Watcher:
    """Scans the inbox and hands each ready object over as one job."""

    def __init__(
        self, settings: DropFolderSettings, inbox: Inbox, claims: Claims, publisher: Publisher, stopper: Stopper
    ) -> None:
        self.settings = settings
        self.inbox = inbox
        self.claims = claims
        self.publisher = publisher
        self.stopper = stopper

    async def scan(self) -> ScanReport:
        """One pass: stale claims first, then every ready object in the inbox."""
        report = ScanReport()
        for claim in await self.claims.take_over_stale(self.settings.bucket, self.settings.inbox_prefix):
            log.warning(
                "taking over the unfinished claim of s3://%s/%s (job %s)", claim.obj.bucket, claim.obj.key, claim.job_id
            )
            await self._handle(claim, report)
        objects, server_now = await asyncio.to_thread(self.inbox.list, self.settings.bucket, self.settings.inbox_prefix)
        report.seen = len(objects)
        gate = asyncio.Semaphore(self.settings.scan_concurrency)

        async def one(obj: InboxObject) -> None:
            async with gate:
                if self.stopper.event.is_set():
                    return  # stopping: leave the rest for the next watcher or run
                await self.offer(obj, server_now, report)

        await asyncio.gather(*(one(obj) for obj in objects))
        LAST_SCAN.set_to_current_time()
        return report

    async def offer(self, obj: InboxObject, server_now: datetime | None, report: ScanReport) -> None:
        """Take ``obj`` if it is ready and no other watcher has it."""
        reason = skip_reason(obj, server_now, self.settings.min_age_s)
        if reason is None:
            claim = await self.claims.claim(obj)
            if claim is not None:
                await self._handle(claim, report)
                return
            reason = "claimed"
        report.count(report.skipped, reason)
        SKIPPED.labels(reason=reason).inc()

    async def offer_key(self, key: str) -> ScanReport:
        """A notification named ``key``: take it now, with no quiet period (the upload is complete)."""
        report = ScanReport()
        obj = await asyncio.to_thread(self.inbox.head, self.settings.bucket, key)
        if obj is not None:
            report.seen = 1
            await self.offer(obj, None, report)
        return report

    async def _handle(self, claim: Claim, report: ScanReport) -> None:
        """Judge and copy, publish, delete, finish; each step is safe to redo after a crash."""
        obj, job_id = claim.obj, claim.job_id
        placed = await self._place(obj, job_id)
        if placed is None:
            # Replaced or deleted by someone else before it was handed over: this version is no job.
            await self.claims.finish(obj, "vanished", None, None)
            report.count(report.handled, "vanished")
            OBJECTS.labels(outcome="vanished").inc()
            log.info("s3://%s/%s changed or went before it was handed over", obj.bucket, obj.key)
            return
        target, etag, error = placed
        if not claim.published and not await self.claims.job_known(job_id):
            await self._publish(obj, job_id, target, etag, error)
            await self.claims.mark_published(obj)
        still = await asyncio.to_thread(self.inbox.head, obj.bucket, obj.key)
        if still is not None and same_version(still, obj):
            await asyncio.to_thread(self.inbox.delete, obj.bucket, obj.key)
        outcome = "failed" if error else "processed"
        await self.claims.finish(obj, outcome, target, str(error.code) if error else None)
        report.count(report.handled, outcome)
        OBJECTS.labels(outcome=outcome).inc()
        log.info(
            "s3://%s/%s -> %s as job %s%s", obj.bucket, obj.key, target, job_id, f" ({error.code})" if error else ""
        )

    async def _place(self, obj: InboxObject, job_id: str) -> tuple[str, str, PermanentError | None] | None:
        """Copy the claimed version to processed/ or failed/, or find the copy made before a crash.

        Returns the target key, its etag and why it was refused (None for a PDF);
        None when the claimed version is gone and no copy of it exists.
        """
        settings = self.settings
        current = await asyncio.to_thread(self.inbox.head, obj.bucket, obj.key)
        if current is not None and same_version(current, obj):
            head: bytes | None = None
            if current.size <= settings.max_pdf_bytes:
                head = await asyncio.to_thread(self.inbox.first_bytes, current, HEADER_WINDOW)
            if head is not None or current.size > settings.max_pdf_bytes:
                error = judge(current, head, settings.max_pdf_bytes)
                metadata = {META_JOB_ID: job_id, META_INBOX_KEY: urllib.parse.quote(obj.key, safe="/")}
                if error is None and head is not None and image_kind(head) is not None:
                    converted = await self._convert(current, job_id, metadata)
                    if not isinstance(converted, PermanentError):
                        return converted
                    error = converted  # a bad image goes to failed/ as it came, like any refused object
                prefix = settings.failed_prefix if error else settings.processed_prefix
                target = target_key(prefix, job_id, settings.inbox_prefix, obj.key)
                if error:
                    metadata[META_ERROR_CODE] = str(error.code)
                copied = await asyncio.to_thread(self.inbox.copy, current, target, metadata)
                if copied is not None:
                    return target, copied, error
        return await self._find_copy(job_id, obj.key)

    async def _convert(
        self, obj: InboxObject, job_id: str, metadata: dict[str, str]
    ) -> tuple[str, str, None] | PermanentError | None:
        """Make the PDF of an image and store it as the job's source, ``processed/{job_id}/{name}.pdf``.

        The PDF, not the image, is what the job reads (workers read PDFs only);
        the image itself is not kept. Returns the PDF's key and etag, the error
        that refuses the image, or None when this version changed or went away.
        """
        settings = self.settings
        data = await asyncio.to_thread(self.inbox.read, obj)
        if data is None:
            return None
        limits = ImageLimits(settings.image_max_megapixels, settings.image_max_pages)
        name = obj.key.rsplit("/", 1)[-1]
        try:
            pdf = await asyncio.to_thread(image_to_pdf, data, name, dpi=settings.dropfolder_dpi, limits=limits)
        except PermanentError as exc:
            return exc
        target = pdf_name(target_key(settings.processed_prefix, job_id, settings.inbox_prefix, obj.key))
        etag = await asyncio.to_thread(self.inbox.put, settings.bucket, target, pdf, metadata)
        log.info("s3://%s/%s: an image of %d bytes made a PDF of %d", obj.bucket, obj.key, len(data), len(pdf))
        return target, etag, None

    async def _find_copy(self, job_id: str, key: str) -> tuple[str, str, PermanentError | None] | None:
        """Our own copy of a claimed object, made before a crash (the metadata says why it was refused)."""
        settings = self.settings
        processed = target_key(settings.processed_prefix, job_id, settings.inbox_prefix, key)
        failed = target_key(settings.failed_prefix, job_id, settings.inbox_prefix, key)
        for candidate in (processed, pdf_name(processed), failed):  # the middle one: the PDF made of an image
            found = await asyncio.to_thread(self.inbox.head, settings.bucket, candidate)
            if found is not None:
                code = found.metadata.get(META_ERROR_CODE)
                return (
                    candidate,
                    found.etag,
                    PermanentError(ErrorCode(code), "refused by the drop folder") if code else None,
                )
        return None

    async def _publish(
        self, obj: InboxObject, job_id: str, target: str, etag: str, error: PermanentError | None
    ) -> None:
        """The job's messages: a request (or a failure), with ids fixed by the job id so a resend dedupes."""
        settings = self.settings
        source = Source(bucket=settings.bucket, key=target, etag=etag)
        options = JobOptions(engine=settings.dropfolder_engine, dpi=settings.dropfolder_dpi)
        # The file's own name too, as uploads and submits keep it: the status page and pagewire jobs show it.
        metadata = {"dropfolder_key": clean_name(obj.key, 1024), "filename": clean_name(obj.key.rsplit("/", 1)[-1])}
        if error is None:
            request = JobRequest(job_id=job_id, source=source, options=options, submitted_by=ROLE, metadata=metadata)
            await self.publisher.publish_job(request)
        queued = JobQueued(
            event_id=completion_event_id(job_id, "queued"),
            job_id=job_id,
            source=source,
            options=options,
            submitted_by=ROLE,
            metadata=metadata,
        )
        await self.publisher.publish_event(queued)
        if error is not None:
            failed = JobFailed(
                event_id=completion_event_id(job_id, "failed"),
                job_id=job_id,
                error_code=error.code,
                message=clean_text(f"{error.message} (s3://{obj.bucket}/{obj.key})"),
            )
            await self.publisher.publish_event(failed)


# --- the role ---------------------------------------------------------------------------


async def _consume_notifications(
    settings: DropFolderSettings, connection: aio_pika.abc.AbstractRobustConnection, watcher: Watcher
) -> aio_pika.abc.AbstractQueue:
    """Bind ``{prefix}.dropfolder`` to the notification exchange and hand each named key to the watcher."""
    assert settings.notify_exchange
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=settings.scan_concurrency)
    # Fanout, durable: what MinIO declares with exchange_type=fanout durable=on (docs/dropfolder.md).
    exchange = await channel.declare_exchange(settings.notify_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
    queue = await channel.declare_queue(settings.notify_queue, durable=True, arguments={"x-queue-type": "quorum"})
    await queue.bind(exchange)

    async def on_message(message: AbstractIncomingMessage) -> None:
        try:
            for key in notified_keys(message.body, settings.bucket, settings.inbox_prefix):
                await watcher.offer_key(key)
        except Exception:
            # The scan is the safety net: a notification that fails costs latency, never the object.
            log.exception("could not handle an S3 notification; the next scan will take the object")
        await ack(message)

    await queue.consume(on_message)
    return queue


async def run(settings: DropFolderSettings, stopper: Stopper | None = None) -> None:
    """Watch the inbox until SIGTERM/SIGINT; the object in hand is finished first."""
    stopper = stopper or Stopper()
    stopper.install()
    validate_bucket(settings.bucket, settings.allowed_buckets)  # else every job would fail bucket_not_allowed
    health = metrics.Health(ROLE)
    storage = Storage(settings)
    db = create_async_engine(settings.database_url.get_secret_value(), pool_size=settings.scan_concurrency + 1)
    async with metrics.serving(settings.metrics_port, health, settings.metrics_host):
        connection = await connect(settings, ROLE)
        health.watch(connection)
        try:
            publisher = await Publisher.open(connection, settings.topology)
            claims = Claims(db, settings.watcher_name, settings.claim_timeout_s)
            watcher = Watcher(settings, Inbox(storage), claims, publisher, stopper)
            if settings.notify_exchange:
                await _consume_notifications(settings, connection, watcher)
            log.info(
                "watching s3://%s/%s every %ss (min age %ss)",
                settings.bucket,
                settings.inbox_prefix,
                settings.scan_interval_s,
                settings.min_age_s,
            )
            while not stopper.event.is_set():
                try:
                    report = await watcher.scan()
                except (ClientError, BotoCoreError, OSError) as exc:
                    health.set_ready(False, f"scan failed: {exc}")
                    log.warning("scan failed, trying again in %ss: %s", settings.scan_interval_s, exc)
                else:
                    health.set_ready(True)
                    health.beat()
                    if report.handled:
                        log.info("scan: %s objects, handled %s, left %s", report.seen, report.handled, report.skipped)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopper.event.wait(), settings.scan_interval_s)
            health.set_ready(False, "stopping")
        finally:
            await close(connection)
            await db.dispose()
    log.info("%s stopped", ROLE)


async def _command(args: argparse.Namespace) -> int:
    from adapters.logs import configure_logging

    settings = DropFolderSettings()
    configure_logging(settings.log_level, settings.log_format)
    if args.once:
        return await _scan_once(settings)
    await run(settings)
    return 0


async def _scan_once(settings: DropFolderSettings) -> int:
    """One scan and out (cron, tests): prints the report as JSON."""
    validate_bucket(settings.bucket, settings.allowed_buckets)
    db = create_async_engine(settings.database_url.get_secret_value())
    connection = await connect(settings, ROLE)
    try:
        publisher = await Publisher.open(connection, settings.topology)
        claims = Claims(db, settings.watcher_name, settings.claim_timeout_s)
        report = await Watcher(settings, Inbox(Storage(settings)), claims, publisher, Stopper()).scan()
    finally:
        await close(connection)
        await db.dispose()
    print(json.dumps({"seen": report.seen, "handled": report.handled, "skipped": report.skipped}))
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``pagewire dropfolder`` to the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dropfolder",
        help="watch an S3 prefix and make a job of every PDF or image put there",
        description="Watch PAGEWIRE_INBOX_PREFIX (inbox/): each new PDF (or PNG, JPEG, TIFF image) becomes one job"
        " and moves to processed/"
        " (refused objects to failed/). Stops cleanly on SIGTERM.",
    )
    parser.add_argument("--once", action="store_true", help="scan once, print what was done as JSON, and exit")
    parser.set_defaults(func=_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m producer.dropfolder``: the same command before it is wired into ``pagewire``."""
    parser = argparse.ArgumentParser(prog="pagewire")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["dropfolder", *(sys.argv[1:] if argv is None else argv)])
    return int(asyncio.run(args.func(args)))


if __name__ == "__main__":
    raise SystemExit(main())
