"""What the gateway's routes share: its settings, its state, who is calling, job ownership and the upload path.

Every route that names a job reads it through :func:`owned_job`, and every
route that takes a PDF queues it through :func:`submit_pdf` (or
:func:`publish_for`): routes added elsewhere get the ownership rules by
calling the same two.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Self

import fastapi
from fastapi import Depends, Request, Security
from fastapi.responses import StreamingResponse
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from starlette.background import BackgroundTask
from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.api import Client
from producer.web import events as live
from producer.web import jobs as store
from producer.web.access import (
    ALL_JOBS,
    ApiKey,
    Caller,
    Keyring,
    Lease,
    Limits,
    Slots,
    StreamTokens,
    TokenError,
    open_caller,
)
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
    """The HTTP gateway: what every client needs, plus keys, limits and the browser-facing policy."""

    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description='JSON list of keys: {"name", "key", "role": "submit"|"admin"} objects, or plain key strings',
    )
    http_no_auth: bool = Field(default=False, description="serve without keys: every route open to anyone")
    http_max_upload_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1, description="largest upload (a multipart body); larger: file_too_large"
    )
    http_max_json_bytes: int = Field(
        default=64 * 1024, ge=1024, description="largest body that is not an upload; larger: message_too_large"
    )
    http_max_files: int = Field(default=16, ge=1, description="PDFs in one POST /process-pdfs at most")
    http_wait_s: float = Field(default=600.0, gt=0, description="how long POST /process-pdf(s) waits for the end")
    http_max_streams_per_key: int = Field(default=16, ge=1, description="open event streams of one key at once")
    http_max_uploads_per_key: int = Field(default=8, ge=1, description="uploads of one key in flight at once")
    http_max_priority: int = Field(
        default=4, ge=0, le=9, description="highest priority a submit key may ask for; admin keys: 9"
    )
    http_stream_token_secret: SecretStr | None = Field(
        default=None, description="HMAC secret of stream tokens; unset: one per process (one gateway only)"
    )
    http_stream_token_ttl_s: float = Field(default=300.0, gt=0, le=86400, description="life of a stream token")
    http_allowed_hosts: list[str] = Field(
        default_factory=lambda: ["*"], description="Host headers answered (TrustedHostMiddleware); ['*']: any"
    )
    http_cors_origins: list[str] = Field(
        default_factory=list, description="origins whose pages may call the API from a browser; empty: none"
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _plain_keys(cls, value: Any) -> Any:
        # The older form, a list of bare key strings, stays valid: each is a submit key.
        if isinstance(value, list):
            return [ApiKey.from_plain(v) if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _distinct_keys(self) -> Self:
        names = [k.name for k in self.api_keys]
        secrets_ = [k.key.get_secret_value() for k in self.api_keys]
        if len(set(names)) != len(names):
            raise ValueError("PAGEWIRE_API_KEYS: two keys have the same name")
        if len(set(secrets_)) != len(secrets_):
            raise ValueError("PAGEWIRE_API_KEYS: the same key is listed twice")
        return self

    @property
    def limits(self) -> Limits:
        """What a submit key may do unless its entry says otherwise."""
        return Limits(self.http_max_priority, self.http_max_streams_per_key, self.http_max_uploads_per_key)


NO_KEYS_MESSAGE = (
    "pagewire http: no API keys are set, and a gateway without keys lets anyone read, upload and delete. "
    'Set PAGEWIRE_API_KEYS, e.g. \'[{"name": "team-a", "key": "<32 random characters>", "role": "submit"}]\', '
    "or run it open on purpose with PAGEWIRE_HTTP_NO_AUTH=1 (pagewire http --no-auth)."
)


class NoKeysError(RuntimeError):
    """The gateway was asked to start without keys and without being told to run open."""


def check_auth(settings: HttpSettings) -> bool:
    """Whether the gateway runs open; raises :class:`NoKeysError` when it has no keys and no leave to."""
    if settings.api_keys:
        if settings.http_no_auth:
            log.warning("PAGEWIRE_HTTP_NO_AUTH is ignored: API keys are set, and every route asks for one")
        return False
    if not settings.http_no_auth:
        raise NoKeysError(NO_KEYS_MESSAGE)
    return True


@dataclass
class Gateway:
    """What the routes share: settings, the client, the event hub, the keys, and the jobs queued here lately."""

    settings: HttpSettings
    client: Client
    hub: live.EventHub
    keyring: Keyring = field(init=False)
    tokens: StreamTokens = field(init=False)
    open: bool = field(init=False)
    streams: Slots = field(default_factory=Slots)
    uploads: Slots = field(default_factory=Slots)
    # job id -> (when queued here, its owner)
    recent: OrderedDict[str, tuple[float, str | None]] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.open = check_auth(self.settings)
        self.keyring = Keyring(self.settings.api_keys, self.settings.limits)
        secret = self.settings.http_stream_token_secret
        self.tokens = StreamTokens(
            secret.get_secret_value().encode() if secret else None, self.settings.http_stream_token_ttl_s
        )

    def remember(self, job_id: str, owner: str | None) -> None:
        """A job queued here: known before the recorder has written its row."""
        self.recent[job_id] = (time.monotonic(), owner)
        while len(self.recent) > RECENT_JOBS:
            self.recent.popitem(last=False)

    def is_recent(self, job_id: str) -> bool:
        return self.recent_owner(job_id)[0]

    def recent_owner(self, job_id: str) -> tuple[bool, str | None]:
        """Whether the job was queued here lately, and if so its owner."""
        queued = self.recent.get(job_id)
        if queued is None or time.monotonic() - queued[0] >= RECENT_TTL_S:
            return False, None
        return True, queued[1]


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
_token_query = APIKeyQuery(
    name="token", auto_error=False, description="a stream token (POST .../stream-token): EventSource sends no headers"
)
JSON_UPLOAD_PATHS = frozenset({"/process-batch-stream"})
"""Routes whose JSON body carries documents (slimgest's batch of base64 images): uploads to :class:`Guard`."""
CALLER_SCOPE_KEY = "pagewire.caller"
"""Where :class:`Guard` leaves the caller it identified before the body came, for the route to find."""


def _unauthorized(message: str = "an API key is needed (X-API-Key or Authorization: Bearer)") -> ApiError:
    return ApiError(401, HttpErrorCode.UNAUTHORIZED, message)


def authenticate(gw: Gateway, headers: Headers, query: QueryParams) -> Caller:
    """The caller of a request, from its ``X-API-Key`` or ``Authorization: Bearer`` header."""
    if gw.open:
        return open_caller(gw.settings.limits)
    if "api_key" in query:
        # A key in a URL lands in access logs, proxy logs and browser history; say so rather than ignore it.
        raise _unauthorized("API keys are not accepted in the URL: send X-API-Key or Authorization: Bearer")
    given = headers.get("x-api-key")
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if not given and scheme.lower() == "bearer":
        given = credentials.strip()
    caller = gw.keyring.identify(given) if given else None
    if caller is None:
        raise _unauthorized()
    return caller


async def require_key(
    request: Request,
    gw: GatewayDep,
    header: Annotated[str | None, Security(_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_key_bearer)],
) -> Caller:
    """The caller, from its key; 401 without a valid one (unless the gateway runs open).

    ``header`` and ``bearer`` are declared so the OpenAPI document shows both
    ways; the check itself reads the headers once, in :func:`authenticate`.
    """
    known_caller: Caller | None = request.scope.get(CALLER_SCOPE_KEY)
    if known_caller is not None:
        return known_caller
    return authenticate(gw, request.headers, request.query_params)


CallerDep = Annotated[Caller, Depends(require_key)]


async def require_stream_caller(
    request: Request,
    gw: GatewayDep,
    header: Annotated[str | None, Security(_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_key_bearer)],
    token: Annotated[str | None, Security(_token_query)],
) -> Caller:
    """The caller of an event stream: a key in a header, or a stream token for this very stream."""
    if token is None or gw.open:
        return authenticate(gw, request.headers, request.query_params)
    scope = request.path_params.get("job_id", ALL_JOBS)
    try:
        name = gw.tokens.verify(token, scope)
    except TokenError as exc:
        raise _unauthorized(str(exc)) from exc
    caller = gw.keyring.named(name) if name is not None else None
    if caller is None:  # the key was removed since: its tokens go with it
        raise _unauthorized("the key this stream token was made for is no longer accepted")
    return caller


StreamCallerDep = Annotated[Caller, Depends(require_stream_caller)]


class Guard:
    """What must be settled before a request body is read: who sends it, whether they may, how big it may be.

    FastAPI reads a form before it runs a route's dependencies, so without this
    an anonymous client could make the gateway spool 256 MiB before hearing
    401. An upload (multipart, or a route of ``JSON_UPLOAD_PATHS``) has its
    caller identified here from the headers, takes one of the key's upload
    slots for the life of the request, and may be as large as
    ``http_max_upload_bytes``; any other body is capped at
    ``http_max_json_bytes`` (a JSON request is read whole into memory).
    """

    def __init__(self, app: ASGIApp, settings: HttpSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        upload = content_type == "multipart/form-data" or scope["path"] in JSON_UPLOAD_PATHS
        if upload:
            limit, code = self.settings.http_max_upload_bytes, ErrorCode.FILE_TOO_LARGE
            variable = "PAGEWIRE_HTTP_MAX_UPLOAD_BYTES"
        else:
            limit, code = self.settings.http_max_json_bytes, ErrorCode.MESSAGE_TOO_LARGE
            variable = "PAGEWIRE_HTTP_MAX_JSON_BYTES"
        message = f"request body larger than {limit} bytes ({variable})"
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await error_response(413, code, message)(scope, receive, send)
            return
        lease: Lease | None = None
        if upload:
            gw: Gateway = scope["app"].state.gateway
            try:
                caller = authenticate(gw, headers, QueryParams(scope.get("query_string", b"")))
            except ApiError as exc:
                await error_response(exc.status_code, exc.code, exc.message)(scope, receive, send)
                return
            lease = gw.uploads.take(caller.slot_key, caller.limits.max_uploads)
            if lease is None:
                await error_response(
                    429,
                    HttpErrorCode.TOO_MANY_UPLOADS,
                    f"{caller.limits.max_uploads} uploads of this key are in flight already; retry when one ends",
                )(scope, receive, send)
                return
            scope[CALLER_SCOPE_KEY] = caller
        received = 0

        async def limited() -> Message:
            nonlocal received
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > limit:
                    raise ApiError(413, code, message)
            return incoming

        try:
            await self.app(scope, limited, send)
        finally:
            if lease is not None:
                lease.release()


def links(job_id: str) -> dict[str, str]:
    base = f"/jobs/{job_id}"
    return {"self": base, "events": f"{base}/events", "result": f"{base}/result", "cancel": f"{base}/cancel"}


def check_priority(caller: Caller, priority: int) -> None:
    """Refuse a priority above the caller's: the high lane is for the keys an operator chose."""
    if priority > caller.limits.max_priority:
        raise ApiError(
            403,
            HttpErrorCode.PRIORITY_NOT_ALLOWED,
            f"priority {priority} is above this key's highest, {caller.limits.max_priority}",
        )


async def claim(gw: Gateway, caller: Caller, job_id: str) -> None:
    """Reserve ``job_id`` for the caller before anything is uploaded or published: 409 when it is taken.

    The claim is also the ownership record, written before the job exists
    anywhere else, so there is no moment when the job is visible but unowned.
    """
    if gw.is_recent(job_id) or await gw.client.taken(job_id):
        raise ApiError(409, HttpErrorCode.JOB_EXISTS, f"job {job_id!r} exists already", job_id=job_id)
    if not await store.claim_job(gw.client.db, job_id, caller.owner):
        raise ApiError(409, HttpErrorCode.JOB_EXISTS, f"job {job_id!r} exists already", job_id=job_id)


async def submit_pdf(
    gw: Gateway,
    caller: Caller,
    data: bytes | BinaryIO,
    *,
    filename: str,
    options: JobOptions,
    job_id: str | None = None,
    priority: int = 0,
    submitted_by: str | None = None,
    metadata: dict[str, str] | None = None,
) -> JobRequest:
    """Upload one PDF for ``caller`` and queue it: the one way every route that takes a PDF submits it.

    ``metadata`` is kept beside the file name.
    """
    check_priority(caller, priority)
    job_id = job_id or str(uuid.uuid4())
    await claim(gw, caller, job_id)
    queued = await gw.client.submit(
        data,
        options=options,
        job_id=job_id,
        priority=priority,
        submitted_by=submitted_by,
        metadata={**(metadata or {}), "filename": clean_name(filename)},
    )
    gw.remember(job_id, caller.owner)
    log.info("queued upload %s as job %s for %s", filename, job_id, caller.slot_key)
    return queued


async def submit_upload(
    gw: Gateway,
    caller: Caller,
    data: bytes | BinaryIO,
    filename: str,
    form: dict[str, Any],
    *,
    metadata: dict[str, str] | None = None,
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
    return await submit_pdf(
        gw,
        caller,
        data,
        filename=filename,
        options=request.options,
        job_id=request.job_id,
        priority=request.priority,
        submitted_by=request.submitted_by,
        metadata=metadata,
    )


async def publish_for(gw: Gateway, caller: Caller, request: JobRequest) -> None:
    """Queue a request for a PDF already in S3, owned by ``caller``."""
    check_priority(caller, request.priority)
    await claim(gw, caller, request.job_id)
    await gw.client.publish(request)
    gw.remember(request.job_id, caller.owner)


async def _known(gw: Gateway, job_id: str) -> dict[str, Any] | None:
    """The job's row with its ``owner``; a job claimed lately, not recorded yet, reads as queued; None: unknown."""
    row = await store.get_job(gw.client.db, job_id)
    if row is None:
        recent, owner = gw.recent_owner(job_id)
        if not recent:  # queued through another gateway, perhaps, and not recorded yet
            recent, owner = await store.fresh_claim(gw.client.db, job_id, RECENT_TTL_S)
        if recent:
            row = {"job_id": job_id, "status": JobStatus.QUEUED.value, "total_pages": None, "owner": owner}
    return row


async def owned_job(gw: Gateway, caller: Caller, job_id: str) -> dict[str, Any]:
    """The job's row, for a caller that may see it; every route that names a job goes through here.

    A job of another key answers exactly as a job that does not exist (404
    ``job_not_found``): a key learns nothing about other keys' jobs, not even
    that they are there.
    """
    row = await _known(gw, job_id)
    if row is None or not caller.sees(row.get("owner")):
        raise ApiError(404, ErrorCode.JOB_NOT_FOUND, f"no job {job_id!r}", job_id=job_id)
    return row


def visibility(gw: Gateway, caller: Caller) -> live.Visibility | None:
    """For streams of many jobs: whether the caller may see a job's events; None: every job (an admin)."""
    if caller.admin:
        return None

    async def visible(job_id: str) -> bool:
        recent, owner = gw.recent_owner(job_id)
        if not recent:
            owner = await store.owner_of(gw.client.db, job_id)
        return caller.sees(owner)

    return visible


async def stream_lease(gw: Gateway, caller: Caller) -> Lease:
    """One of the caller's stream slots, or 429 ``too_many_streams``."""
    lease = gw.streams.take(caller.slot_key, caller.limits.max_streams)
    if lease is None:
        raise ApiError(
            429,
            HttpErrorCode.TOO_MANY_STREAMS,
            f"{caller.limits.max_streams} event streams of this key are open already; close one first",
        )
    return lease


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


def sse_response(
    items: AsyncIterator[live.Item], *, cleanup: BackgroundTask | None = None, lease: Lease | None = None
) -> StreamingResponse:
    """Items as a server-sent event response; ``lease`` (a stream slot) is given back when it ends, however."""
    if lease is not None:
        items = _releasing(items, lease)
        # The stream's own end gives the slot back; the task covers a client gone before the stream began.
        cleanup = BackgroundTask(_run_all, lease.release, cleanup)
    return StreamingResponse(
        live.sse_stream(items),
        media_type="text/event-stream",
        # No caching, and no buffering in nginx: events must reach the browser as they happen.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=cleanup,
    )


async def _releasing(items: AsyncIterator[live.Item], lease: Lease) -> AsyncIterator[live.Item]:
    try:
        async for item in items:
            yield item
    finally:
        lease.release()


async def _run_all(release: Callable[[], None], then: BackgroundTask | None) -> None:
    release()
    if then is not None:
        await then()
