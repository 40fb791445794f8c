"""What the gateway's routes share: its settings, its state, the API-key check and the upload path."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import fastapi
from fastapi import Depends, Request, Security
from fastapi.responses import StreamingResponse
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field, SecretStr, ValidationError
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.api import Client
from producer.web import events as live
from producer.web import jobs as store
from producer.web.errors import ApiError, HttpErrorCode, error_response, validation_error
from schemas.errors import ErrorCode
from schemas.fields import JOB_ID_MAX_CHARS, JOB_ID_PATTERN, clean_name
from schemas.messages import JobOptions, JobRequest, Source
from schemas.settings import ClientSettings
from schemas.tables import JobStatus

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
JobIdPath = Annotated[
    str,
    fastapi.Path(
        max_length=JOB_ID_MAX_CHARS, pattern=JOB_ID_PATTERN, description="letters, digits and _.-, not only dots"
    ),
]
"""A job id in a route's path: refused with 422 before any lookup when it could not be one."""
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
            await error_response(413, ErrorCode.FILE_TOO_LARGE, self._message())(scope, receive, send)
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


def links(job_id: str) -> dict[str, str]:
    base = f"/jobs/{job_id}"
    return {"self": base, "events": f"{base}/events", "result": f"{base}/result", "cancel": f"{base}/cancel"}


async def submit_upload(
    gw: Gateway, data: bytes, filename: str, form: dict[str, Any], *, metadata: dict[str, str] | None = None
) -> JobRequest:
    """Upload one PDF and queue it, with options from form fields; ``metadata`` is kept beside the file name."""
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
        raise validation_error(exc) from exc
    await check_new(gw, request.job_id)
    queued = await gw.client.submit(
        data,
        options=request.options,
        job_id=request.job_id,
        priority=request.priority,
        submitted_by=request.submitted_by,
        metadata={**(metadata or {}), "filename": clean_name(filename)},
    )
    gw.remember(queued.job_id)
    log.info("queued upload %s (%d bytes) as job %s", filename, len(data), queued.job_id)
    return queued


async def check_new(gw: Gateway, job_id: str) -> None:
    if gw.is_recent(job_id) or await store.job_exists(gw.client.db, job_id):
        raise ApiError(409, HttpErrorCode.JOB_EXISTS, f"job {job_id!r} exists already", job_id=job_id)


async def known(gw: Gateway, job_id: str) -> dict[str, Any] | None:
    """The job's row; a job queued here whose row is not written yet reads as queued; None: unknown."""
    row = await store.get_job(gw.client.db, job_id)
    if row is None and gw.is_recent(job_id):
        row = {"job_id": job_id, "status": JobStatus.QUEUED.value, "total_pages": None}
    return row


async def require(gw: Gateway, job_id: str) -> dict[str, Any]:
    row = await known(gw, job_id)
    if row is None:
        raise ApiError(404, ErrorCode.JOB_NOT_FOUND, f"no job {job_id!r}", job_id=job_id)
    return row


async def answers(probe: Callable[[], Awaitable[Any]]) -> bool:
    try:
        await asyncio.wait_for(probe(), 5.0)
        return True
    except Exception:
        log.warning("health probe failed", exc_info=True)
        return False


def aware(moment: datetime | None) -> datetime | None:
    """A time without a zone is UTC (the tables store UTC)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def sse_response(items: AsyncIterator[live.Item], *, cleanup: BackgroundTask | None = None) -> StreamingResponse:
    return StreamingResponse(
        live.sse_stream(items),
        media_type="text/event-stream",
        # No caching, and no buffering in nginx: events must reach the browser as they happen.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=cleanup,
    )
