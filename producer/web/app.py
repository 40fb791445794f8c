"""``pagewire http``: the HTTP door to pagewire and its live status page.

The gateway is a producer (it uploads to S3 and publishes ``JobRequest`` and
``JobCancelled``), a subscriber (one queue on the events exchange, fanned out
to server-sent event streams) and a reader of the status tables. It keeps no
state of its own beyond a short memory of the jobs it has just queued, so any
number of gateways can run side by side.

Errors are JSON, ``{"error_code": ..., "message": ...}``, with the codes of the
status tables (``schemas.errors.ErrorCode``) where one fits and the few of
:class:`HttpErrorCode` for what only HTTP can go wrong with.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.api import Client
from producer.web import events as live
from producer.web import jobs as store
from schemas.errors import ErrorCode, PagewireError
from schemas.messages import TERMINAL_EVENTS, Engine, JobOptions, JobRequest, Source
from schemas.settings import ClientSettings
from schemas.tables import TERMINAL_JOB_STATUSES, JobStatus

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
PDF_CONTENT_TYPES = frozenset({"application/pdf", "application/x-pdf", "application/octet-stream"})
PDF_MAGIC = b"%PDF-"
RECENT_JOBS = 10_000
RECENT_TTL_S = 600.0
DPI_DOC = "render resolution (slimgest's default 150); as a query parameter or a form field"


class HttpSettings(ClientSettings):
    """The HTTP gateway: what every client needs, plus keys and upload limits."""

    api_keys: list[SecretStr] = Field(
        default_factory=list, description="JSON list of accepted API keys; empty: no key is asked for"
    )
    http_max_upload_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1, description="largest request body (an upload); larger: file_too_large"
    )
    http_max_files: int = Field(default=16, ge=1, description="PDFs in one POST /process-pdfs at most")
    http_wait_s: float = Field(default=600.0, gt=0, description="how long POST /process-pdf(s) waits for the end")


class HttpErrorCode(StrEnum):
    """Codes for what only goes wrong over HTTP; the rest use ``ErrorCode``."""

    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    JOB_EXISTS = "job_exists"
    JOB_FINISHED = "job_finished"
    JOB_NOT_FINISHED = "job_not_finished"
    WAIT_TIMEOUT = "wait_timeout"
    SERVICE_UNAVAILABLE = "service_unavailable"


# HTTP status of each table code a request can meet.
ERROR_STATUS: dict[str, int] = {
    ErrorCode.JOB_NOT_FOUND: 404,
    ErrorCode.RESULT_NOT_READY: 409,
    ErrorCode.INVALID_KEY: 400,
    ErrorCode.BUCKET_NOT_ALLOWED: 403,
    ErrorCode.SOURCE_MISSING: 422,
    ErrorCode.FILE_TOO_LARGE: 413,
    ErrorCode.MESSAGE_TOO_LARGE: 413,
    ErrorCode.NOT_A_PDF: 415,
    ErrorCode.EMPTY_FILE: 422,
    ErrorCode.INVALID_OPTIONS: 422,
    ErrorCode.MALFORMED_MESSAGE: 422,
    ErrorCode.STORAGE_UNAVAILABLE: 503,
}


class ApiError(HTTPException):
    """An error answer with a stable code; raise it anywhere in a request."""

    def __init__(self, status: int, code: str, message: str, *, job_id: str | None = None) -> None:
        super().__init__(status, message)
        self.code = code
        self.message = message
        self.job_id = job_id


# --- the API's models ------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every error answer."""

    error_code: str = Field(description="a code of the status tables (docs/errors.md) or of docs/http.md")
    message: str
    job_id: str | None = None


class JobCreate(BaseModel):
    """``POST /jobs`` as JSON: read a PDF that is already in S3."""

    model_config = ConfigDict(extra="forbid")

    source: Source
    options: JobOptions = Field(default_factory=JobOptions)
    job_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    priority: int = Field(default=0, ge=0, le=9)
    submitted_by: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=32)


class JobAccepted(BaseModel):
    """A job was queued: follow it at ``links``."""

    job_id: str
    status: Literal["queued"] = "queued"
    links: dict[str, str]


class CancelRequest(BaseModel):
    """``POST /jobs/{id}/cancel``: why, for the record."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=1000)


class CancelAccepted(BaseModel):
    job_id: str
    status: Literal["cancelling"] = "cancelling"


class JobSummary(BaseModel):
    """A job's row with its progress (the ``job_progress`` figures)."""

    job_id: str
    status: JobStatus
    total_pages: int | None = None
    pages_done: int = 0
    pages_ok: int = 0
    pages_failed: int = 0
    percent: float | None = None
    pages_per_second: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    source_bucket: str | None = None
    source_key: str | None = None
    options: dict[str, Any] | None = None
    priority: int = 0
    submitted_by: str | None = None
    metadata: dict[str, Any] | None = None
    result_keys: dict[str, str] | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    links: dict[str, str] = Field(default_factory=dict)


class PageSummary(BaseModel):
    """One page row, without its text."""

    page_no: int
    status: str
    engine: str | None = None
    confidence: float | None = None
    duration_ms: float | None = None
    attempts: int = 1
    error_code: str | None = None
    error_message: str | None = None


class JobDetail(JobSummary):
    """``GET /jobs/{id}``: the row and the status of each page."""

    pages: list[PageSummary] = Field(default_factory=list)


class JobList(BaseModel):
    """A page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next one."""

    jobs: list[JobSummary]
    next_cursor: str | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    checks: dict[str, bool]


class LegacyPage(BaseModel):
    """A page as slimgest's web service returned it, with pagewire's status beside."""

    page_number: int
    ocr_text: str
    raw_ocr_results: list[dict[str, Any]]
    status: str
    engine: str | None = None
    confidence: float | None = None
    error_code: str | None = None


class LegacyPdf(BaseModel):
    filename: str
    job_id: str
    status: str
    total_pages: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    pages: list[LegacyPage]


class LegacyResult(BaseModel):
    """``POST /process-pdf(s)``: one entry per PDF, in the order sent."""

    pdfs: list[LegacyPdf]


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 415, 422, 503)
}
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "server-sent events"}
}


# --- the gateway's state -----------------------------------------------------------


@dataclass
class Gateway:
    """What the routes share: settings, the client, the event hub, and the jobs queued here lately."""

    settings: HttpSettings
    client: Client
    hub: live.EventHub
    recent: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def remember(self, job_id: str) -> None:
        """A job queued here: known before the recorder has written its row."""
        self.recent[job_id] = time.monotonic()
        while len(self.recent) > RECENT_JOBS:
            self.recent.popitem(last=False)

    def is_recent(self, job_id: str) -> bool:
        queued = self.recent.get(job_id)
        return queued is not None and time.monotonic() - queued < RECENT_TTL_S


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


GatewayDep = Annotated[Gateway, Depends(gateway)]
_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key from PAGEWIRE_API_KEYS")
_key_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
_key_query = APIKeyQuery(name="api_key", auto_error=False, description="for EventSource, which cannot set headers")


async def require_key(
    gw: GatewayDep,
    header: Annotated[str | None, Security(_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_key_bearer)],
    query: Annotated[str | None, Security(_key_query)],
) -> None:
    """Let a request through when no keys are set, or when it shows one of them."""
    keys = gw.settings.api_keys
    if not keys:
        return
    given = header or (bearer.credentials if bearer else None) or query
    # compare_digest on every key: the time taken says nothing about which key nearly matched.
    if given and any(hmac.compare_digest(given.encode(), k.get_secret_value().encode()) for k in keys):
        return
    raise ApiError(401, HttpErrorCode.UNAUTHORIZED, "an API key is needed (X-API-Key or Authorization: Bearer)")


# --- uploads ------------------------------------------------------------------------


class BodyLimit:
    """Refuse request bodies over the limit while they arrive, not after they are on disk."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").decode()
        if declared.isdigit() and int(declared) > self.limit:
            await _error_response(413, ErrorCode.FILE_TOO_LARGE, self._message())(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise ApiError(413, ErrorCode.FILE_TOO_LARGE, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"request body larger than {self.limit} bytes (PAGEWIRE_HTTP_MAX_UPLOAD_BYTES)"


async def read_pdf(upload: StarletteUploadFile, limit: int) -> bytes:
    """The bytes of an uploaded PDF, after the content-type, size and header checks."""
    name = upload.filename or "upload"
    content_type = (upload.content_type or "").split(";")[0].strip().lower()
    if content_type not in PDF_CONTENT_TYPES:
        raise ApiError(415, ErrorCode.NOT_A_PDF, f"{name}: content type {content_type or 'none'!r} is not a PDF's")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, ErrorCode.FILE_TOO_LARGE, f"{name}: larger than {limit} bytes")
    if not data:
        raise ApiError(422, ErrorCode.EMPTY_FILE, f"{name}: the file is empty")
    # PDF readers accept junk before the header within the first kilobyte; so do we.
    if PDF_MAGIC not in data[:1024]:
        raise ApiError(415, ErrorCode.NOT_A_PDF, f"{name}: no %PDF- header")
    return data


def _validation_error(exc: ValidationError, code: ErrorCode = ErrorCode.INVALID_OPTIONS) -> ApiError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return ApiError(422, code, f"{where}: {first['msg']}")


def _links(job_id: str) -> dict[str, str]:
    base = f"/jobs/{job_id}"
    return {"self": base, "events": f"{base}/events", "result": f"{base}/result", "cancel": f"{base}/cancel"}


async def _submit_upload(gw: Gateway, data: bytes, filename: str, form: dict[str, Any]) -> JobRequest:
    """Upload one PDF and queue it, with options from form fields."""
    try:
        options = JobOptions.model_validate({k: v for k, v in form.items() if k in JobOptions.model_fields})
        request = JobRequest(
            source=Source(bucket=gw.settings.s3_bucket, key="pending"),
            options=options,
            job_id=form.get("job_id") or str(uuid.uuid4()),
            priority=form.get("priority") or 0,
            submitted_by=form.get("submitted_by"),
        )
    except ValidationError as exc:
        raise _validation_error(exc) from exc
    await _check_new(gw, request.job_id)
    queued = await gw.client.submit(
        data,
        options=request.options,
        job_id=request.job_id,
        priority=request.priority,
        submitted_by=request.submitted_by,
        metadata={"filename": filename[:256]},
    )
    gw.remember(queued.job_id)
    log.info("queued upload %s (%d bytes) as job %s", filename, len(data), queued.job_id)
    return queued


async def _check_new(gw: Gateway, job_id: str) -> None:
    if gw.is_recent(job_id) or await store.job_exists(gw.client.db, job_id):
        raise ApiError(409, HttpErrorCode.JOB_EXISTS, f"job {job_id!r} exists already", job_id=job_id)


async def _known(gw: Gateway, job_id: str) -> dict[str, Any] | None:
    """The job's row; a job queued here whose row is not written yet reads as queued; None: unknown."""
    row = await store.get_job(gw.client.db, job_id)
    if row is None and gw.is_recent(job_id):
        row = {"job_id": job_id, "status": JobStatus.QUEUED.value, "total_pages": None}
    return row


async def _require(gw: Gateway, job_id: str) -> dict[str, Any]:
    row = await _known(gw, job_id)
    if row is None:
        raise ApiError(404, ErrorCode.JOB_NOT_FOUND, f"no job {job_id!r}", job_id=job_id)
    return row


# --- the routes ------------------------------------------------------------------------

_UPLOAD_FORM_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "the PDF (application/pdf)"},
        "engine": {"type": "string", "enum": [e.value for e in Engine]},
        "dpi": {"type": "integer", "minimum": 36, "maximum": 600},
        "first_page": {"type": "integer", "minimum": 1},
        "last_page": {"type": "integer", "minimum": 1},
        "priority": {"type": "integer", "minimum": 0, "maximum": 9},
        "job_id": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
        "submitted_by": {"type": "string", "maxLength": 256},
    },
}


def _api_routes(app: FastAPI) -> None:
    auth = [Depends(require_key)]

    @app.post(
        "/jobs",
        status_code=202,
        response_model=JobAccepted,
        responses=ERRORS,
        dependencies=auth,
        tags=["jobs"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {"schema": _UPLOAD_FORM_SCHEMA},
                    "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
                },
            }
        },
    )
    async def create_job(request: Request, gw: GatewayDep) -> JSONResponse:
        """Queue a PDF: upload it (multipart, field ``file``) or name one in S3 (JSON). Answers at once."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            async with request.form(max_files=1, max_fields=16) as form:
                upload = form.get("file")
                if not isinstance(upload, StarletteUploadFile):
                    raise ApiError(422, ErrorCode.MALFORMED_MESSAGE, "file: a PDF is required (multipart field 'file')")
                data = await read_pdf(upload, gw.settings.http_max_upload_bytes)
                fields = {k: v for k, v in form.items() if isinstance(v, str) and v != ""}
                queued = await _submit_upload(gw, data, upload.filename or "upload.pdf", fields)
        elif content_type == "application/json":
            try:
                body = JobCreate.model_validate_json(await request.body())
            except ValidationError as exc:
                raise _validation_error(exc, ErrorCode.MALFORMED_MESSAGE) from exc
            job_id = body.job_id or str(uuid.uuid4())
            await _check_new(gw, job_id)
            gw.client.storage.check_source(body.source)
            info = await asyncio.to_thread(gw.client.storage.head, body.source.bucket, body.source.key)
            source = body.source.model_copy(update={"etag": body.source.etag or info.etag})
            queued = JobRequest(
                job_id=job_id,
                source=source,
                options=body.options,
                priority=body.priority,
                submitted_by=body.submitted_by,
                metadata=body.metadata,
            )
            await gw.client.publish(queued)
            gw.remember(job_id)
            log.info("queued s3://%s/%s as job %s", source.bucket, source.key, job_id)
        else:
            raise ApiError(
                415, HttpErrorCode.UNSUPPORTED_MEDIA_TYPE, "send multipart/form-data (an upload) or application/json"
            )
        accepted = JobAccepted(job_id=queued.job_id, links=_links(queued.job_id))
        return JSONResponse(accepted.model_dump(), status_code=202, headers={"Location": f"/jobs/{queued.job_id}"})

    @app.get("/jobs", response_model=JobList, responses=ERRORS, dependencies=auth, tags=["jobs"])
    async def list_jobs(
        gw: GatewayDep,
        status: Annotated[list[JobStatus], Query(description="only jobs in these states")] = [],  # noqa: B006
        submitted_by: Annotated[str | None, Query(max_length=256)] = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the page before")] = None,
    ) -> JobList:
        """Jobs, newest first, a page at a time."""
        where = store.JobFilter(tuple(status), submitted_by, _aware(created_after), _aware(created_before))
        rows, next_cursor = await store.list_jobs(gw.client.db, where, limit=limit, cursor=cursor)
        return JobList(jobs=[JobSummary(**r, links=_links(r["job_id"])) for r in rows], next_cursor=next_cursor)

    @app.get("/jobs/{job_id}", response_model=JobDetail, responses=ERRORS, dependencies=auth, tags=["jobs"])
    async def get_job(job_id: str, gw: GatewayDep) -> JobDetail:
        """The job's status, progress and error, and the status of each page."""
        row = await _require(gw, job_id)
        pages = await store.get_pages(gw.client.db, job_id)
        return JobDetail(**row, links=_links(job_id), pages=[PageSummary(**p) for p in pages])

    @app.get(
        "/jobs/{job_id}/events",
        response_class=StreamingResponse,
        responses={**SSE_RESPONSE, **ERRORS},
        dependencies=auth,
        tags=["events"],
    )
    async def job_events(
        job_id: str, gw: GatewayDep, text: Annotated[bool, Query(description="send each page's text")] = True
    ) -> StreamingResponse:
        """Server-sent events of one job: ``start``, ``page``, ``complete`` or ``error``; a reconnect replays."""
        await _require(gw, job_id)
        items = live.follow_job(gw.hub, gw.client.db, job_id, with_text=text)
        return _sse_response(items)

    @app.get("/events", response_class=StreamingResponse, responses={**SSE_RESPONSE, **ERRORS}, dependencies=auth)
    async def all_events(gw: GatewayDep) -> StreamingResponse:
        """Server-sent events of every job, without page text (``queued`` too): the status page's one stream."""
        return _sse_response(live.follow_all(gw.hub, gw.client.db))

    @app.get(
        "/jobs/{job_id}/result",
        responses={
            200: {"content": {"text/markdown": {"schema": {"type": "string"}}, "application/json": {}}},
            **ERRORS,
        },
        response_class=Response,
        dependencies=auth,
        tags=["jobs"],
    )
    async def job_result(
        job_id: str, gw: GatewayDep, format: Literal["md", "json"] = "md", download: bool = False
    ) -> Response:
        """The assembled result: Markdown (one section a page) or JSON (pages, blocks, boxes)."""
        await _require(gw, job_id)
        body = await gw.client.result(job_id, format)
        media = "text/markdown; charset=utf-8" if format == "md" else "application/json"
        headers = {"Content-Disposition": f'attachment; filename="{job_id}.{format}"'} if download else None
        return Response(body, media_type=media, headers=headers)

    @app.post(
        "/jobs/{job_id}/cancel",
        status_code=202,
        response_model=CancelAccepted,
        responses=ERRORS,
        dependencies=auth,
        tags=["jobs"],
    )
    async def cancel_job(job_id: str, gw: GatewayDep, body: CancelRequest | None = None) -> CancelAccepted:
        """Cancel a job: the recorder marks it cancelled, workers skip its remaining pages."""
        row = await _require(gw, job_id)
        if row["status"] in TERMINAL_JOB_STATUSES:
            raise ApiError(409, HttpErrorCode.JOB_FINISHED, f"job {job_id!r} is {row['status']} already", job_id=job_id)
        reason = (body.reason if body else "") or "cancelled over HTTP"
        # The event makes the recorder mark the job; Client.cancel also tells running roles to skip its pages.
        await gw.client.cancel(job_id, reason)
        log.info("cancel of job %s published: %s", job_id, reason)
        return CancelAccepted(job_id=job_id)

    @app.delete("/jobs/{job_id}", status_code=204, responses=ERRORS, dependencies=auth, tags=["jobs"])
    async def remove_job(job_id: str, gw: GatewayDep) -> Response:
        """Delete a finished job: its S3 objects under ``jobs/{id}/`` and its rows."""
        row = await _require(gw, job_id)
        if row["status"] not in TERMINAL_JOB_STATUSES:
            raise ApiError(
                409,
                HttpErrorCode.JOB_NOT_FINISHED,
                f"job {job_id!r} is {row['status']}: cancel it first",
                job_id=job_id,
            )
        deleted = await store.delete_job(gw.client.db, gw.client.storage, gw.settings.s3_bucket, job_id)
        gw.recent.pop(job_id, None)
        log.info("deleted job %s and %d S3 objects", job_id, deleted)
        return Response(status_code=204)

    @app.get("/health", response_model=Health, responses={503: {"model": Health}}, tags=["service"])
    async def health(gw: GatewayDep) -> JSONResponse:
        """Whether the broker, the database, S3 and the event subscription answer."""
        checks = {"broker": gw.hub.running, "events": gw.hub.running}
        checks["database"] = await _answers(lambda: store.job_exists(gw.client.db, "-"))
        checks["storage"] = await _answers(
            lambda: asyncio.to_thread(gw.client.storage.client.head_bucket, Bucket=gw.settings.s3_bucket)
        )
        ok = all(checks.values())
        body = Health(status="ok" if ok else "degraded", checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


async def _answers(probe: Callable[[], Awaitable[Any]]) -> bool:
    try:
        await asyncio.wait_for(probe(), 5.0)
        return True
    except Exception:
        log.warning("health probe failed", exc_info=True)
        return False


def _aware(moment: datetime | None) -> datetime | None:
    """A time without a zone is UTC (the tables store UTC)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _sse_response(items: AsyncIterator[live.Item], *, cleanup: BackgroundTask | None = None) -> StreamingResponse:
    return StreamingResponse(
        live.sse_stream(items),
        media_type="text/event-stream",
        # No caching, and no buffering in nginx: events must reach the browser as they happen.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=cleanup,
    )


# --- routes old slimgest clients keep using ------------------------------------------


def _legacy_pdf(filename: str, job_id: str, row: dict[str, Any], pages: list[dict[str, Any]]) -> LegacyPdf:
    return LegacyPdf(
        filename=filename,
        job_id=job_id,
        status=row.get("status") or "unknown",
        total_pages=row.get("total_pages"),
        error_code=row.get("error_code"),
        error_message=row.get("error_message"),
        pages=[
            LegacyPage(
                page_number=p["page_no"],
                ocr_text=p.get("text") or "",
                raw_ocr_results=p.get("blocks") or [],
                status=p["status"],
                engine=p.get("engine"),
                confidence=p.get("confidence"),
                error_code=p.get("error_code"),
            )
            for p in pages
        ],
    )


def _legacy_options(dpi_query: float | None, dpi_form: float | None, engine: Engine) -> JobOptions:
    dpi = dpi_form if dpi_form is not None else dpi_query
    try:
        return JobOptions(engine=engine, dpi=round(dpi) if dpi is not None else 150)
    except ValidationError as exc:
        raise _validation_error(exc) from exc


async def _run_to_end(gw: Gateway, data: bytes, filename: str, options: JobOptions) -> LegacyPdf:
    """Queue one PDF and wait for its end; the rows are then read back, text and boxes included."""
    job_id = str(uuid.uuid4())
    deadline = time.monotonic() + gw.settings.http_wait_s
    with gw.hub.listen(job_id) as inbox:
        await gw.client.submit(data, options=options, job_id=job_id, metadata={"filename": filename[:256]})
        gw.remember(job_id)
        while True:
            event = await inbox.get(2.0)
            if isinstance(event, TERMINAL_EVENTS):
                break
            if event is None:  # quiet: the end may have passed before we listened, or been missed
                row = await store.get_job(gw.client.db, job_id)
                if row is not None and row["status"] in TERMINAL_JOB_STATUSES:
                    break
            if time.monotonic() > deadline:
                raise ApiError(
                    504,
                    HttpErrorCode.WAIT_TIMEOUT,
                    f"job {job_id} is not done after {gw.settings.http_wait_s:g} s",
                    job_id=job_id,
                )
    row = await gw.client.final_status(job_id, wait_s=30.0)
    pages = await store.get_pages(gw.client.db, job_id, with_text=True)
    return _legacy_pdf(filename, job_id, row, pages)


async def _legacy_stream(gw: Gateway, job_id: str, filename: str, inbox: live.Inbox) -> AsyncIterator[live.Item]:
    """slimgest's stream: ``start``, ``page`` (page_number, page_text, total_pages_so_far), ``complete``, ``error``."""
    yield ("start", {"status": "processing", "pdf": filename, "job_id": job_id})
    done = 0
    async for name, data in live.follow_job(gw.hub, gw.client.db, job_id, inbox=inbox, quiet_s=2.0):
        if name == "page" and data["status"] in store.DONE_PAGE_STATUSES:
            done += 1
            yield (
                "page",
                {
                    "page_number": data["page_no"],
                    "page_text": data.get("text") or "",
                    "total_pages_so_far": done,
                    "status": data["status"],
                    "engine": data.get("engine"),
                    "job_id": job_id,
                },
            )
        elif name == "complete":
            pages = await store.get_pages(gw.client.db, job_id, with_text=True)
            pdf = _legacy_pdf(filename, job_id, {"status": data["status"]}, pages)
            body = {"status": "complete", "total_pages": len(pdf.pages), "pdf_name": filename, "job_id": job_id}
            yield ("complete", {**body, "pages": [p.model_dump() for p in pdf.pages], "job_status": data["status"]})
        elif name == "error":
            yield (
                "error",
                {
                    "status": "error",
                    "error": data.get("message") or data["status"],
                    "error_code": data.get("error_code"),
                }
                | {"job_id": job_id},
            )


def _legacy_routes(app: FastAPI) -> None:
    auth = [Depends(require_key)]

    @app.post("/process-pdf", response_model=LegacyResult, responses=ERRORS, dependencies=auth, tags=["slimgest"])
    async def process_pdf(
        gw: GatewayDep,
        file: Annotated[UploadFile, File(description="the PDF")],
        dpi: Annotated[float | None, Query(ge=36, le=600, description=DPI_DOC)] = None,
        dpi_form: Annotated[float | None, Form(alias="dpi", ge=36, le=600)] = None,
        engine: Annotated[Engine, Form()] = Engine.AUTO,
    ) -> LegacyResult | JSONResponse:
        """Read one PDF and answer with its pages once done (slimgest's route; a failed job answers 422)."""
        data = await read_pdf(file, gw.settings.http_max_upload_bytes)
        pdf = await _run_to_end(gw, data, file.filename or "upload.pdf", _legacy_options(dpi, dpi_form, engine))
        if pdf.status == JobStatus.FAILED:
            body = ErrorBody(
                error_code=pdf.error_code or "internal_error", message=pdf.error_message or "", job_id=pdf.job_id
            )
            return JSONResponse(body.model_dump(), status_code=422)
        return LegacyResult(pdfs=[pdf])

    @app.post("/process-pdfs", response_model=LegacyResult, responses=ERRORS, dependencies=auth, tags=["slimgest"])
    async def process_pdfs(
        gw: GatewayDep,
        files: Annotated[list[UploadFile], File(description="the PDFs")],
        dpi: Annotated[float | None, Query(ge=36, le=600, description=DPI_DOC)] = None,
        dpi_form: Annotated[float | None, Form(alias="dpi", ge=36, le=600)] = None,
        engine: Annotated[Engine, Form()] = Engine.AUTO,
    ) -> LegacyResult:
        """Read several PDFs side by side and answer once all are done, failed ones included with their code."""
        if len(files) > gw.settings.http_max_files:
            raise ApiError(413, ErrorCode.MESSAGE_TOO_LARGE, f"at most {gw.settings.http_max_files} files a request")
        options = _legacy_options(dpi, dpi_form, engine)
        uploads = [
            (f.filename or f"upload-{i}.pdf", await read_pdf(f, gw.settings.http_max_upload_bytes))
            for i, f in enumerate(files, 1)
        ]
        pdfs = await asyncio.gather(*(_run_to_end(gw, data, name, options) for name, data in uploads))
        return LegacyResult(pdfs=list(pdfs))

    @app.post(
        "/process-pdf-stream",
        response_class=StreamingResponse,
        responses={**SSE_RESPONSE, **ERRORS},
        dependencies=auth,
        tags=["slimgest"],
    )
    async def process_pdf_stream(
        gw: GatewayDep,
        file: Annotated[UploadFile, File(description="the PDF")],
        dpi: Annotated[float | None, Query(ge=36, le=600, description=DPI_DOC)] = None,
        dpi_form: Annotated[float | None, Form(alias="dpi", ge=36, le=600)] = None,
        engine: Annotated[Engine, Form()] = Engine.AUTO,
    ) -> StreamingResponse:
        """Read one PDF and stream its pages as server-sent events (slimgest's route)."""
        data = await read_pdf(file, gw.settings.http_max_upload_bytes)
        filename = file.filename or "upload.pdf"
        options = _legacy_options(dpi, dpi_form, engine)
        job_id = str(uuid.uuid4())
        inbox = gw.hub.open_inbox(job_id)  # before the submit: not even the first event may slip past
        try:
            await gw.client.submit(data, options=options, job_id=job_id, metadata={"filename": filename[:256]})
        except BaseException:
            gw.hub.close_inbox(inbox)
            raise
        gw.remember(job_id)
        # The stream closes the inbox; the task covers a client gone before the stream began.
        return _sse_response(
            _legacy_stream(gw, job_id, filename, inbox), cleanup=BackgroundTask(gw.hub.close_inbox, inbox)
        )


# --- errors ---------------------------------------------------------------------------


def _error_response(status: int, code: str, message: str, job_id: str | None = None) -> JSONResponse:
    body = ErrorBody(error_code=code, message=message, job_id=job_id)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status_code, exc.code, exc.message, exc.job_id)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: HttpErrorCode.NOT_FOUND, 405: HttpErrorCode.METHOD_NOT_ALLOWED}.get(exc.status_code)
        return _error_response(exc.status_code, code or HttpErrorCode.NOT_FOUND, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"]) or "request"
        return _error_response(422, ErrorCode.MALFORMED_MESSAGE, f"{where}: {first['msg']}")

    @app.exception_handler(PagewireError)
    async def pagewire_error(request: Request, exc: PagewireError) -> JSONResponse:
        status = ERROR_STATUS.get(exc.code, 503 if exc.retryable else 500)
        return _error_response(status, exc.code, exc.message)

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("a service did not answer: %s", exc)
        return _error_response(
            503, HttpErrorCode.SERVICE_UNAVAILABLE, f"a service did not answer: {type(exc).__name__}"
        )

    for kind in (ConnectionError, TimeoutError, OperationalError, DBAPIError):
        app.add_exception_handler(kind, unavailable)


# --- the app ---------------------------------------------------------------------------


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's document, plus the JSON body of ``POST /jobs`` (the route reads its body by hand)."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            job_create = JobCreate.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(job_create.pop("$defs", {}))
            schemas["JobCreate"] = job_create
            app.openapi_schema = document
        return app.openapi_schema

    return build


def create_app(settings: HttpSettings | None = None) -> FastAPI:
    """The gateway as an ASGI app; it connects to the broker when it starts (``uvicorn --factory`` works)."""
    settings = settings or HttpSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with Client(settings) as client:
            hub = live.EventHub(client)
            await hub.start()
            app.state.gateway = Gateway(settings, client, hub)
            log.info("pagewire http ready (prefix %s)", settings.prefix)
            try:
                yield
            finally:
                await hub.stop()

    app = FastAPI(
        title="pagewire",
        version="1",
        description="PDFs in, text out: queue jobs, follow them live, read their results. See docs/http.md.",
        lifespan=lifespan,
        # Swagger UI and ReDoc load from a CDN; the document itself is at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, limit=settings.http_max_upload_bytes)
    _error_handlers(app)
    _api_routes(app)
    _legacy_routes(app)

    @app.get("/", include_in_schema=False)
    async def status_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app
