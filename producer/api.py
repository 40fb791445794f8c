"""The Python API of pagewire: submit PDFs, follow their events, read status and results.

::

    async with Client(ClientSettings()) as client:
        async with client.subscribe() as events:      # bind first: no event is missed
            request = await client.submit(Path("scan.pdf"))
            async for event in events.for_jobs({request.job_id}):
                ...
        print(await client.status(request.job_id))

Publishing is confirmed and mandatory: ``submit`` returns only once the broker
has taken the request, and raises if it did not.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from adapters.amqp import Publisher, connect
from adapters.storage import Storage
from producer.images import ImageLimits, image_kind, image_to_pdf
from schemas.errors import ConfigurationError, ErrorCode, PermanentError
from schemas.fields import clean_name
from schemas.messages import (
    TERMINAL_EVENTS,
    Event,
    JobCancelled,
    JobOptions,
    JobQueued,
    JobRequest,
    PageTask,
    Source,
    idempotent_job_id,
    parse_event,
)
from schemas.names import HIGH_PRIORITY
from schemas.s3keys import source_key
from schemas.settings import ClientSettings
from schemas.tables import TERMINAL_JOB_STATUSES, PageStatus, job_tombstones, jobs, pages

log = logging.getLogger(__name__)

STATUS_FIELDS = (
    "job_id",
    "status",
    "total_pages",
    "pages_done",
    "pages_ok",
    "pages_failed",
    "percent",
    "pages_per_second",
    "error_code",
    "error_message",
    "source_bucket",
    "source_key",
    "result_bucket",
    "result_keys",
    "created_at",
    "started_at",
    "finished_at",
)


class Subscription:
    """Events from the fanout exchange on a private queue that lives as long as this object."""

    def __init__(self, queue: aio_pika.abc.AbstractQueue, max_bytes: int) -> None:
        self.queue = queue
        self.max_bytes = max_bytes
        # One consumer for the subscription's whole life: cancelling it would
        # make the broker delete the auto-delete queue, and with it what is queued.
        self._messages = queue.iterator()

    async def __aiter__(self) -> AsyncIterator[Event]:
        async for message in self.messages():
            # Anyone may publish on the fanout: a body that is no event is skipped, not the end of the stream.
            try:
                event = parse_event(message.body, self.max_bytes)
            except PermanentError as exc:
                log.warning("skipped a message on the events exchange that is no event: %s", exc)
                continue
            yield event

    async def messages(self) -> AsyncIterator[aio_pika.abc.AbstractIncomingMessage]:
        """The events as they came, unparsed: for a reader that looks at the headers first (each
        event's type and job id are there) and parses later or never, as ``pagewire bench`` does."""
        async for message in self._messages:
            await message.ack()  # a private queue: once read here, the event is the caller's
            yield message

    async def close(self) -> None:
        await self._messages.close()

    async def for_jobs(self, job_ids: set[str], *, until_done: bool = True) -> AsyncIterator[Event]:
        """Events of ``job_ids`` only; with ``until_done``, stop when each has a terminal event (at once for none)."""
        if until_done and not job_ids:
            return
        open_jobs = set(job_ids)
        events = aiter(self)
        try:
            async for event in events:
                if event.job_id not in job_ids:
                    continue
                yield event
                if until_done and isinstance(event, TERMINAL_EVENTS):
                    open_jobs.discard(event.job_id)
                    if not open_jobs:
                        return
        finally:
            # Close the queue iterator here, on this task, not later from the garbage collector.
            await events.aclose()  # type: ignore[attr-defined]


class Client:
    """A connection to one pagewire deployment (broker, S3, database)."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.storage = Storage(settings)
        self._connection: AbstractRobustConnection | None = None
        self._publisher: Publisher | None = None
        self._db: AsyncEngine | None = None

    async def __aenter__(self) -> Client:
        self._connection = await connect(self.settings, "client")
        self._publisher = await Publisher.open(self._connection, self.settings.topology)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._connection is not None:
            await self._connection.close()
        if self._db is not None:
            await self._db.dispose()

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError("use Client as an async context manager")
        return self._publisher

    @property
    def db(self) -> AsyncEngine:
        if self._db is None:
            self._db = create_async_engine(self.settings.database_url.get_secret_value(), pool_size=2)
        return self._db

    async def submit(
        self,
        pdf: Path | bytes | BinaryIO,
        *,
        options: JobOptions | None = None,
        job_id: str | None = None,
        priority: int = 0,
        idempotency_key: str | None = None,
        deadline: datetime | None = None,
        submitted_by: str | None = None,
        metadata: dict[str, str] | None = None,
        filename: str | None = None,
    ) -> JobRequest:
        """Upload a PDF (or a PNG, JPEG or TIFF image, made a PDF first) to ``jobs/{job_id}/source.pdf`` and queue it.

        ``pdf`` is a path, the bytes, or a binary file open for reading (sent from where it stands).

        With ``idempotency_key`` the job id is derived from the key: submitting
        twice gives one job, planned once, and the second time nothing is
        uploaded or queued. ``filename`` (a path's own name by default) is kept
        in ``metadata``, for the status page and ``pagewire jobs``. A ``job_id``
        that names a job already (or a deleted one) raises ``ConfigurationError``.
        """
        derived = job_id is None and idempotency_key is not None
        job_id = job_id or (idempotent_job_id(idempotency_key) if idempotency_key else str(uuid.uuid4()))
        options = options or JobOptions()
        filename = filename or (pdf.name if isinstance(pdf, Path) else None)
        metadata = {**(metadata or {}), **({"filename": clean_name(filename)} if filename else {})}
        # Validated before anything is read or uploaded: a request the contract refuses leaves nothing behind.
        request = JobRequest(
            job_id=job_id,
            source=Source(bucket=self.settings.s3_bucket, key=source_key(job_id)),
            options=options,
            priority=priority,
            idempotency_key=idempotency_key,
            deadline=deadline,
            submitted_by=submitted_by,
            metadata=metadata,
        )
        taken = await self.taken(job_id)
        if taken == "job" and derived:
            return request
        if taken:
            # Uploading would overwrite the source of a job that exists, or of one whose id stays buried.
            what = "exists already" if taken == "job" else "was deleted, and its id is not used again"
            raise ConfigurationError(f"job {job_id!r} {what}: choose another job id")
        if isinstance(pdf, Path):
            with await asyncio.to_thread(pdf.open, "rb") as file:
                etag = await self._store(file, request.source, filename, options.dpi)
        else:
            etag = await self._store(pdf, request.source, filename, options.dpi)
        request = request.model_copy(update={"source": request.source.model_copy(update={"etag": etag})})
        await self.publish(request)
        return request

    async def taken(self, job_id: str) -> str | None:
        """``"job"`` where a job has this id, ``"tombstone"`` where a deleted or expired one had it, else None.

        A tombstoned id stays taken: the recorder drops every event of it."""
        async with self.db.connect() as conn:
            if (await conn.execute(select(jobs.c.job_id).where(jobs.c.job_id == job_id))).first():
                return "job"
            query = select(job_tombstones.c.job_id).where(job_tombstones.c.job_id == job_id)
            return "tombstone" if (await conn.execute(query)).first() else None

    async def _store(self, pdf: bytes | BinaryIO, source: Source, filename: str | None, dpi: int) -> str:
        """Put a document where ``source`` says, an image made a PDF first; returns the object's etag.

        A file is streamed from where it stands, a part at a time; only an image is read whole, to
        be converted. Anything else goes as it is: the planner judges it and the job fails with its code.
        """
        head = pdf[:16] if isinstance(pdf, bytes) else await asyncio.to_thread(_peek, pdf, 16)
        if image_kind(head) is not None:
            data = pdf if isinstance(pdf, bytes) else await asyncio.to_thread(pdf.read)
            limits = ImageLimits(self.settings.image_max_megapixels, self.settings.image_max_pages)
            pdf = await asyncio.to_thread(image_to_pdf, data, filename or "image", dpi=dpi, limits=limits)
        if isinstance(pdf, bytes):
            return await asyncio.to_thread(self.storage.put_bytes, source.bucket, source.key, pdf, "application/pdf")
        return await asyncio.to_thread(self.storage.put_file, source.bucket, source.key, pdf, "application/pdf")

    async def publish(self, request: JobRequest) -> None:
        """Queue a request for a PDF already in S3; ``JobQueued`` follows once the broker confirmed it."""
        self.storage.check_source(request.source)
        await self.publisher.publish_job(request)
        await self.publisher.publish_event(
            JobQueued(
                job_id=request.job_id,
                source=request.source,
                options=request.options,
                priority=request.priority,
                submitted_by=request.submitted_by,
                metadata=request.metadata,
            )
        )

    async def cancel(self, job_id: str, reason: str = "") -> None:
        """Cancel a job: the recorder marks it ``cancelled``, running roles skip its remaining pages."""
        event = JobCancelled(job_id=job_id, reason=reason)
        await self.publisher.publish_event(event)
        await self.publisher.publish_control(event)

    async def retry(self, job_id: str) -> list[int]:
        """Queue the pages of a job that failed for good again; returns their numbers.

        The job keeps its status until they land: when they all succeed it
        becomes ``completed`` and a new ``JobCompleted`` goes out.
        """
        async with self.db.connect() as conn:
            job = (await conn.execute(select(jobs).where(jobs.c.job_id == job_id))).mappings().first()
            if job is None:
                raise PermanentError(ErrorCode.JOB_NOT_FOUND, f"no job {job_id!r}")
            query = select(pages.c.page_no).where(pages.c.job_id == job_id, pages.c.status == PageStatus.FAILED)
            failed = list((await conn.execute(query.order_by(pages.c.page_no))).scalars())
        if not failed:
            return []
        source = Source(bucket=job["source_bucket"], key=job["source_key"], etag=job["source_etag"])
        options = JobOptions.model_validate(job["options"] or {})
        for page_no in failed:
            task = PageTask(job_id=job_id, source=source, first_page=page_no, last_page=page_no, options=options)
            await self.publisher.publish_task(task, high=job["priority"] >= HIGH_PRIORITY)
        return failed

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        """A private, auto-deleted queue bound to the events exchange, for the life of the block."""
        if self._connection is None:
            raise RuntimeError("use Client as an async context manager")
        channel = await self._connection.channel()
        try:
            await channel.set_qos(prefetch_count=100)
            exchange = await channel.get_exchange(self.settings.topology.events_exchange)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange)
            subscription = Subscription(queue, self.settings.max_message_bytes)
            try:
                yield subscription
            finally:
                await subscription.close()
        finally:
            await channel.close()

    async def status(self, job_id: str) -> dict[str, Any]:
        """The job's row from ``job_progress`` and ``jobs``; raises ``PermanentError`` when unknown."""
        query = text(
            "SELECT p.*, j.error_message, j.result_bucket, j.result_keys "
            "FROM job_progress p JOIN jobs j USING (job_id) WHERE job_id = :job_id"
        )
        async with self.db.connect() as conn:
            row = (await conn.execute(query, {"job_id": job_id})).mappings().first()
        if row is None:
            raise PermanentError(ErrorCode.JOB_NOT_FOUND, f"no job {job_id!r}")
        return {name: row[name] for name in STATUS_FIELDS}

    async def final_status(self, job_id: str, wait_s: float = 30.0) -> dict[str, Any]:
        """The job's row once the recorder has committed its end.

        A ``JobFailed`` event comes from the planner, so a subscriber can see it
        before the recorder has written it; this waits for the table to agree.
        """
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            try:
                row = await self.status(job_id)
                if row["status"] in TERMINAL_JOB_STATUSES:
                    return row
            except PermanentError as exc:
                if exc.code != ErrorCode.JOB_NOT_FOUND:
                    raise
                row = {"job_id": job_id, "status": None}
            if asyncio.get_running_loop().time() > deadline:
                return row
            await asyncio.sleep(0.05)

    async def result(self, job_id: str, fmt: str = "md") -> bytes:
        """The assembled result file of a finished job."""
        async with self.db.connect() as conn:
            query = select(jobs.c.status, jobs.c.result_bucket, jobs.c.result_keys, jobs.c.expired_at).where(
                jobs.c.job_id == job_id
            )
            row = (await conn.execute(query)).first()
        if row is None:
            raise PermanentError(ErrorCode.JOB_NOT_FOUND, f"no job {job_id!r}")
        if row.expired_at is not None:
            raise PermanentError(
                ErrorCode.RESULT_NOT_READY,
                f"job {job_id!r} expired at {row.expired_at:%Y-%m-%d %H:%M}: retention deleted its results",
            )
        if not row.result_keys or fmt not in row.result_keys:
            when = f"it ended {row.status}" if row.status in TERMINAL_JOB_STATUSES else f"it is {row.status}: not yet"
            raise PermanentError(ErrorCode.RESULT_NOT_READY, f"job {job_id!r} has no {fmt} result: {when}")
        return await asyncio.to_thread(self.storage.get_bytes, row.result_bucket, row.result_keys[fmt])


def _peek(file: BinaryIO, size: int) -> bytes:
    """The first ``size`` bytes from where ``file`` stands, leaving it there."""
    where = file.tell()
    head = file.read(size)
    file.seek(where)
    return head
