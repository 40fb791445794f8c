"""pagewire's own routes: queue jobs, list and read them, follow their events, fetch results, cancel and delete."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile as StarletteUploadFile

from producer.web import events as live
from producer.web import jobs as store
from producer.web.access import ALL_JOBS, Caller
from producer.web.errors import ApiError, HttpErrorCode, validation_error
from producer.web.gateway import (
    STATIC_DIR,
    CallerDep,
    Gateway,
    GatewayDep,
    JobIdPath,
    StreamCallerDep,
    answers,
    aware,
    check_priority,
    links,
    owned_job,
    publish_for,
    require_key,
    sse_response,
    stream_lease,
    submit_upload,
    visibility,
)
from producer.web.models import (
    ERRORS,
    SSE_RESPONSE,
    CancelAccepted,
    Cancelled,
    CancelRequest,
    Health,
    JobAccepted,
    JobCreate,
    JobDetail,
    JobList,
    JobSummary,
    PageSummary,
    RetryAccepted,
    StreamToken,
)
from producer.web.slimgest import service_status
from producer.web.uploads import dpi_of, read_document
from producer.web.views import attachment, with_client_fields
from schemas.errors import ErrorCode, PermanentError
from schemas.fields import NAME_MAX_CHARS, NAME_PATTERN
from schemas.messages import Engine, JobRequest
from schemas.tables import TERMINAL_JOB_STATUSES, JobStatus

log = logging.getLogger(__name__)

router = APIRouter()
auth = [Depends(require_key)]

UPLOAD_FORM_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "the PDF (application/pdf), or a PNG, JPEG or TIFF image: a page a frame",
        },
        "engine": {"type": "string", "enum": [e.value for e in Engine]},
        "dpi": {"type": "integer", "minimum": 36, "maximum": 600},
        "first_page": {"type": "integer", "minimum": 1},
        "last_page": {"type": "integer", "minimum": 1},
        "priority": {"type": "integer", "minimum": 0, "maximum": 9},
        "job_id": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
        "submitted_by": {"type": "string", "maxLength": 256},
    },
}


@router.post(
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
                "multipart/form-data": {"schema": UPLOAD_FORM_SCHEMA},
                "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
            },
        }
    },
)
async def create_job(request: Request, gw: GatewayDep, caller: CallerDep) -> JSONResponse:
    """Queue a PDF: upload it (multipart, field ``file``) or name one in S3 (JSON). Answers at once."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=16) as form:
            upload = form.get("file")
            if not isinstance(upload, StarletteUploadFile):
                raise ApiError(422, ErrorCode.MALFORMED_MESSAGE, "file: a PDF is required (multipart field 'file')")
            fields = {k: v for k, v in form.items() if isinstance(v, str) and v != ""}
            data = await read_document(upload, gw.settings, dpi=dpi_of(fields.get("dpi")))
            queued = await submit_upload(gw, caller, data, upload.filename or "upload.pdf", fields)
    elif content_type == "application/json":
        try:
            body = JobCreate.model_validate_json(await request.body())
        except ValidationError as exc:
            raise validation_error(exc, ErrorCode.MALFORMED_MESSAGE) from exc
        job_id = body.job_id or str(uuid.uuid4())
        check_priority(caller, body.priority)  # before the HEAD: a refusal costs S3 nothing
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
        await publish_for(gw, caller, queued)
        log.info("queued s3://%s/%s as job %s for %s", source.bucket, source.key, job_id, caller.slot_key)
    else:
        raise ApiError(
            415, HttpErrorCode.UNSUPPORTED_MEDIA_TYPE, "send multipart/form-data (an upload) or application/json"
        )
    accepted = JobAccepted(job_id=queued.job_id, links=links(queued.job_id))
    return JSONResponse(accepted.model_dump(), status_code=202, headers={"Location": f"/jobs/{queued.job_id}"})


@router.get("/jobs", response_model=JobList, responses=ERRORS, dependencies=auth, tags=["jobs"])
async def list_jobs(
    gw: GatewayDep,
    caller: CallerDep,
    status: Annotated[list[JobStatus], Query(description="only jobs in these states")] = [],  # noqa: B006
    submitted_by: Annotated[str | None, Query(max_length=NAME_MAX_CHARS, pattern=NAME_PATTERN)] = None,
    owner: Annotated[
        str | None, Query(max_length=64, pattern=NAME_PATTERN, description="jobs of this key name (admin keys)")
    ] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=512, pattern=NAME_PATTERN, description="next_cursor of the page before")
    ] = None,
) -> JobList:
    """The caller's jobs (an admin key: every job), newest first, a page at a time."""
    where = store.JobFilter(tuple(status), submitted_by, owner, aware(created_after), aware(created_before))
    owned_by = None if caller.admin else caller.name
    rows, next_cursor = await store.list_jobs(gw.client.db, where, limit=limit, cursor=cursor, owned_by=owned_by)
    jobs = [JobSummary(**with_client_fields(r), links=links(r["job_id"])) for r in rows]
    return JobList(jobs=jobs, next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobDetail, responses=ERRORS, dependencies=auth, tags=["jobs"])
async def get_job(job_id: JobIdPath, gw: GatewayDep, caller: CallerDep) -> JobDetail:
    """The job's status, progress and error, and the status of each page (docs/http.md: which ``status`` word)."""
    row = await owned_job(gw, caller, job_id)
    pages = await store.get_pages(gw.client.db, job_id)
    shown = with_client_fields(row, dialect=True)
    return JobDetail(**shown, links=links(job_id), pages=[PageSummary(**p) for p in pages])


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={**SSE_RESPONSE, **ERRORS},
    tags=["events"],
)
async def job_events(
    job_id: JobIdPath,
    gw: GatewayDep,
    caller: StreamCallerDep,
    text: Annotated[bool, Query(description="send each page's text")] = True,
) -> StreamingResponse:
    """Server-sent events of one job: ``start``, ``page``, ``complete`` or ``error``; a reconnect replays.

    A key in a header, or ``?token=`` from ``POST /jobs/{id}/stream-token`` (for EventSource).
    """
    await owned_job(gw, caller, job_id)
    lease = await stream_lease(gw, caller)
    items = live.follow_job(gw.hub, gw.client.db, job_id, with_text=text)
    return sse_response(items, lease=lease)


@router.get("/events", response_class=StreamingResponse, responses={**SSE_RESPONSE, **ERRORS}, tags=["events"])
async def all_events(gw: GatewayDep, caller: StreamCallerDep) -> StreamingResponse:
    """Server-sent events of every job the caller may see, without page text (``queued`` too): the status page's.

    A key in a header, or ``?token=`` from ``POST /events/stream-token`` (for EventSource).
    """
    lease = await stream_lease(gw, caller)
    return sse_response(live.follow_all(gw.hub, gw.client.db, visible=visibility(gw, caller)), lease=lease)


@router.post(
    "/jobs/{job_id}/stream-token", response_model=StreamToken, responses=ERRORS, dependencies=auth, tags=["events"]
)
async def job_stream_token(job_id: JobIdPath, gw: GatewayDep, caller: CallerDep) -> StreamToken:
    """A token that opens this job's event stream for a few minutes: ``GET /jobs/{id}/events?token=...``.

    For ``EventSource``, which cannot send headers: the token, unlike a key,
    opens one stream only and expires, so a URL that holds one gives little away.
    """
    await owned_job(gw, caller, job_id)
    return _token(gw, caller, job_id, f"/jobs/{job_id}/events")


@router.post("/events/stream-token", response_model=StreamToken, responses=ERRORS, dependencies=auth, tags=["events"])
async def all_stream_token(gw: GatewayDep, caller: CallerDep) -> StreamToken:
    """A token that opens ``GET /events`` (the caller's jobs) for a few minutes: ``GET /events?token=...``."""
    return _token(gw, caller, ALL_JOBS, "/events")


def _token(gw: Gateway, caller: Caller, scope: str, path: str) -> StreamToken:
    token, expires = gw.tokens.issue(caller.name, scope)
    return StreamToken(
        token=token, expires_at=datetime.fromtimestamp(expires, UTC), events=f"{path}?{urlencode({'token': token})}"
    )


@router.get(
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
    job_id: JobIdPath, gw: GatewayDep, caller: CallerDep, format: Literal["md", "json"] = "md", download: bool = False
) -> Response:
    """The assembled result: Markdown (one section a page) or JSON (pages, blocks, boxes)."""
    await owned_job(gw, caller, job_id)
    try:
        body = await gw.client.result(job_id, format)
    except PermanentError as exc:
        if exc.code != ErrorCode.JOB_NOT_FOUND:
            raise
        # Queued here a moment ago, its JobQueued not recorded yet: the job is there, its result is not.
        raise ApiError(
            409, ErrorCode.RESULT_NOT_READY, f"job {job_id!r} has no {format} result: not yet", job_id=job_id
        ) from exc
    media = "text/markdown; charset=utf-8" if format == "md" else "application/json"
    headers = attachment(f"{job_id}.{format}") if download else None
    return Response(body, media_type=media, headers=headers)


@router.post(
    "/jobs/{job_id}/cancel",
    status_code=202,
    response_model=CancelAccepted,
    responses=ERRORS,
    dependencies=auth,
    tags=["jobs"],
)
async def cancel_job(
    job_id: JobIdPath, gw: GatewayDep, caller: CallerDep, body: CancelRequest | None = None
) -> CancelAccepted:
    """Cancel a job: the recorder marks it cancelled, workers skip its remaining pages."""
    row = await owned_job(gw, caller, job_id)
    if row["status"] in TERMINAL_JOB_STATUSES:
        raise ApiError(409, HttpErrorCode.JOB_FINISHED, f"job {job_id!r} is {row['status']} already", job_id=job_id)
    reason = (body.reason if body else "") or "cancelled over HTTP"
    # The event makes the recorder mark the job; Client.cancel also tells running roles to skip its pages.
    await gw.client.cancel(job_id, reason)
    log.info("cancel of job %s published by %s: %s", job_id, caller.slot_key, reason)
    return CancelAccepted(job_id=job_id)


@router.post(
    "/jobs/{job_id}/retry",
    status_code=202,
    response_model=RetryAccepted,
    responses=ERRORS,
    dependencies=auth,
    tags=["jobs"],
)
async def retry_job(job_id: JobIdPath, gw: GatewayDep, caller: CallerDep) -> RetryAccepted:
    """Queue the pages that failed for good again (``pagewire retry``); an empty list: none failed."""
    await owned_job(gw, caller, job_id)
    queued = await gw.client.retry(job_id)
    log.info("retry of job %s: %d page(s) queued again by %s", job_id, len(queued), caller.slot_key)
    return RetryAccepted(job_id=job_id, pages=queued)


@router.delete(
    "/jobs/{job_id}",
    status_code=204,
    responses={200: {"model": Cancelled, "description": "the job had not ended: it is being cancelled"}, **ERRORS},
    dependencies=auth,
    tags=["jobs"],
)
async def remove_job(job_id: JobIdPath, gw: GatewayDep, caller: CallerDep) -> Response:
    """Delete a finished job (its S3 objects under ``jobs/{id}/`` and its rows); cancel one that has not ended.

    A job that has not ended is cancelled, as DeepSeek-OCR's server does, where
    pagewire once answered 409 "cancel it first": a second DELETE once it has
    ended deletes it.
    """
    row = await owned_job(gw, caller, job_id)
    if row["status"] not in TERMINAL_JOB_STATUSES:
        await gw.client.cancel(job_id, "cancelled over HTTP (DELETE)")
        log.info("cancel of job %s published by %s (DELETE of a job that had not ended)", job_id, caller.slot_key)
        body = Cancelled(job_id=job_id, message=f"job {job_id} is being cancelled; DELETE it again to remove it")
        return JSONResponse(body.model_dump(), status_code=200)
    deleted = await store.delete_job(gw.client.db, gw.client.storage, gw.settings.s3_bucket, job_id)
    gw.recent.pop(job_id, None)
    log.info("deleted job %s and %d S3 objects for %s", job_id, deleted, caller.slot_key)
    return Response(status_code=204)


@router.get("/", include_in_schema=False)
async def status_page(request: Request, gw: GatewayDep) -> Response:
    """The live status page for a browser; for a program (no text/html in Accept), slimgest's service status."""
    if "text/html" in request.headers.get("accept", ""):
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")
    status = await service_status(gw)
    return JSONResponse(status.model_dump(), status_code=200 if status.status == "ok" else 503)


@router.get("/health", response_model=Health, responses={503: {"model": Health}}, tags=["service"])
async def health(gw: GatewayDep) -> JSONResponse:
    """Whether the broker, the database, S3 and the event subscription answer."""
    checks = {"broker": gw.hub.running, "events": gw.hub.running}
    checks["database"] = await answers(lambda: store.job_exists(gw.client.db, "-"))
    checks["storage"] = await answers(
        lambda: asyncio.to_thread(gw.client.storage.client.head_bucket, Bucket=gw.settings.s3_bucket)
    )
    ok = all(checks.values())
    body = Health(status="ok" if ok else "degraded", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
