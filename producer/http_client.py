"""pagewire's user API through a ``pagewire http`` gateway, for machines that reach only HTTP.

::

    async with HttpClient(ClientSettings(api_url="https://ocr.example", api_key="...")) as client:
        queued = await client.submit(Path("scan.pdf"))
        finals = await client.follow({queued.job_id: "scan.pdf"}, quiet=True)
        print(await client.result(queued.job_id))

It has the methods of :class:`producer.api.Client` that the user commands
call, with the same arguments and results, so ``pagewire --api URL`` runs
them unchanged: no broker, database or S3 credentials on the user's machine,
only the gateway's URL and key. Following a job reads its server-sent event
stream, which replays what the tables hold first, so nothing is missed
between the submit and the first read.

Errors map back to what the direct client raises: a JSON error answer
becomes a ``PermanentError`` with its code (exit codes stay), a gateway that
does not answer, or answers 503, a ``ConnectionError`` (exit code 3).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import httpx

from producer.api import STATUS_FIELDS
from producer.output import FINAL_EVENTS, LABELS, LIST_FIELDS, job_bars
from schemas.errors import ConfigurationError, ErrorCode, PermanentError
from schemas.fields import clean_name, is_job_id
from schemas.messages import JobOptions, JobRequest, Source, idempotent_job_id
from schemas.s3keys import source_key
from schemas.settings import ClientSettings
from schemas.tables import TERMINAL_JOB_STATUSES

log = logging.getLogger(__name__)

_TIMES = frozenset({"created_at", "started_at", "finished_at", "expired_at"})
FOLLOW_ATTEMPTS = 30
"""Times following a job starts again after its stream broke off, a second apart."""


class GatewayError(PermanentError):
    """An error answer of the gateway: its code (a table code, or one of docs/http.md's) and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        # Codes that only HTTP has (unauthorized, job_exists, ...) are not ErrorCode members; users read the text.
        super().__init__(cast(ErrorCode, code), message)
        self.status = status


def _job_path(job_id: str, *rest: str) -> str:
    """The gateway's path of a job; an id no job can have (``../health``, ``a b``) is no job, as for the
    direct client, and never a path of its own."""
    if not is_job_id(job_id):
        raise PermanentError(ErrorCode.JOB_NOT_FOUND, f"no job {job_id!r}")
    return "/".join(("/jobs", job_id, *rest))


def _row(data: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """A gateway answer as the direct client's row: its fields, times as datetimes, pagewire's status word."""
    row = {name: data.get(name) for name in fields}
    row["status"] = data.get("pagewire_status") or data.get("status")
    for name in _TIMES & set(fields):
        value = row[name]
        if isinstance(value, str):
            row[name] = datetime.fromisoformat(value)
    return row


class HttpClient:
    """A connection to one pagewire gateway; the user commands' part of :class:`producer.api.Client`."""

    def __init__(self, settings: ClientSettings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not settings.api_url:
            raise ValueError("HttpClient needs api_url (PAGEWIRE_API_URL or --api)")
        self.settings = settings
        self.url = settings.api_url.rstrip("/")
        headers = {"X-API-Key": settings.api_key.get_secret_value()} if settings.api_key else {}
        # Reads are quick; uploads and results may be large: generous read and write timeouts.
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=httpx.Timeout(300.0, connect=10.0), transport=transport
        )

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionError(f"{self.url}: {exc or type(exc).__name__}") from exc
        if response.is_success:
            return response
        raise self._error(response)

    def _error(self, response: httpx.Response) -> Exception:
        try:
            body = response.json()
            code, message = str(body["error_code"]), str(body.get("message", ""))
        except (ValueError, KeyError, TypeError):
            code, message = "internal_error", f"HTTP {response.status_code}: {response.text[:200]}"
        if response.status_code in (502, 503, 504) and code != "wait_timeout":
            return ConnectionError(f"{self.url}: {code}: {message}")
        return GatewayError(response.status_code, code, message)

    async def submit(
        self,
        pdf: Path | bytes,
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
        """Upload a PDF (or an image) with ``POST /jobs``; the gateway stores it and queues the job.

        The gateway makes the PDF of an image and keeps the file name. An
        ``idempotency_key`` gives the job id as the direct client derives it, so
        a second submit with the key finds the job there (``job_exists``) and
        returns it. ``deadline`` and ``metadata`` have no form field: refused.
        """
        if deadline is not None:
            raise ConfigurationError("a deadline cannot be sent through the gateway: it has no field for one")
        if metadata:
            raise ConfigurationError("metadata cannot be sent through the gateway: it has no field for it")
        options = options or JobOptions()
        job_id = job_id or (idempotent_job_id(idempotency_key) if idempotency_key else None)
        name = filename or (pdf.name if isinstance(pdf, Path) else "upload.pdf")
        data = pdf if isinstance(pdf, bytes) else await asyncio.to_thread(pdf.read_bytes)
        fields: dict[str, str] = {"engine": options.engine.value, "dpi": str(options.dpi), "priority": str(priority)}
        for key, value in (
            ("first_page", options.first_page),
            ("last_page", options.last_page),
            ("job_id", job_id),
            ("submitted_by", submitted_by),
        ):
            if value is not None:
                fields[key] = str(value)
        try:
            response = await self._call(
                "POST", "/jobs", files={"file": (name, data, "application/octet-stream")}, data=fields
            )
            job_id = str(response.json()["job_id"])
        except GatewayError as exc:
            if not (idempotency_key and exc.code == "job_exists" and job_id):
                raise
            log.info("job %s exists already: the same idempotency key", job_id)
        assert job_id is not None
        return JobRequest(
            job_id=job_id,
            # Where the gateway stores uploads: its own bucket, which this side does not know; ours stands in.
            source=Source(bucket=self.settings.s3_bucket, key=source_key(job_id)),
            options=options,
            priority=priority,
            idempotency_key=idempotency_key,
            submitted_by=submitted_by,
            metadata={"filename": clean_name(name)},
        )

    async def job(self, job_id: str) -> dict[str, Any]:
        """``GET /jobs/{id}`` as it comes."""
        return dict((await self._call("GET", _job_path(job_id))).json())

    async def status(self, job_id: str) -> dict[str, Any]:
        """The job's status row (the direct client's fields); raises ``PermanentError`` when unknown."""
        return _row(await self.job(job_id), STATUS_FIELDS)

    async def final_status(self, job_id: str, wait_s: float = 30.0) -> dict[str, Any]:
        """The job's row once it has ended, or as it is after ``wait_s``."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            row = await self.status(job_id)
            if row["status"] in TERMINAL_JOB_STATUSES or asyncio.get_running_loop().time() > deadline:
                return row
            await asyncio.sleep(0.2)

    async def result(self, job_id: str, fmt: str = "md") -> bytes:
        """The assembled result file of a finished job."""
        return (await self._call("GET", _job_path(job_id, "result"), params={"format": fmt})).content

    async def cancel(self, job_id: str, reason: str = "") -> None:
        """Cancel a job (``POST /jobs/{id}/cancel``)."""
        await self._call("POST", _job_path(job_id, "cancel"), json={"reason": reason})

    async def retry(self, job_id: str) -> list[int]:
        """Queue the pages that failed for good again; returns their numbers."""
        return [int(p) for p in (await self._call("POST", _job_path(job_id, "retry"))).json()["pages"]]

    async def list_jobs(
        self, *, statuses: Sequence[str] = (), since_s: float | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Recent jobs, newest first, as ``pagewire jobs`` lists them (``expired`` is not a filter here)."""
        if "expired" in statuses:
            raise PermanentError(ErrorCode.INVALID_OPTIONS, "the gateway cannot filter on expired")
        params: list[tuple[str, str | int]] = [("status", s) for s in statuses]
        rows: list[dict[str, Any]] = []
        if since_s is not None:
            params.append(("created_after", (datetime.now(UTC) - timedelta(seconds=since_s)).isoformat()))
        cursor: str | None = None
        while len(rows) < limit:
            page = [*params, ("limit", min(200, limit - len(rows)))] + ([("cursor", cursor)] if cursor else [])
            body = (await self._call("GET", "/jobs", params=page)).json()
            rows += [_row(job, LIST_FIELDS) for job in body["jobs"]]
            cursor = body.get("next_cursor")
            if not cursor:
                break
        return rows

    async def events(self, path: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """A server-sent event stream of the gateway, as (event name, data) pairs."""
        try:
            async with self._http.stream("GET", path, timeout=httpx.Timeout(None, connect=10.0)) as response:
                if not response.is_success:
                    await response.aread()
                    raise self._error(response)
                name, data = "message", ""
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        name = line.split(":", 1)[1].strip()
                    elif line.startswith("data:"):
                        data += line.split(":", 1)[1].strip()
                    elif line == "" and data:
                        yield name, json.loads(data)
                        name, data = "message", ""
        except httpx.TransportError as exc:
            raise ConnectionError(f"{self.url}: {exc or type(exc).__name__}") from exc

    async def follow(self, names: dict[str, str], *, quiet: bool) -> dict[str, str]:
        """Show a bar per job until each has ended; returns job id -> terminal event type, as ``follow`` does."""
        finals: dict[str, str] = {}
        with job_bars(quiet=quiet) as progress:

            async def one(job_id: str, name: str) -> None:
                bar = progress.add_task(name, total=None)
                for attempt in range(FOLLOW_ATTEMPTS):
                    try:
                        async for event, data in self.events(_job_path(job_id, "events") + "?text=false"):
                            if event == "start":
                                total, done = data.get("total_pages"), data.get("pages_done") or 0
                                progress.update(bar, total=total, completed=done)
                            elif event == "page":
                                progress.update(bar, completed=data.get("pages_done") or 0)
                            elif event in ("complete", "error"):
                                finals[job_id] = FINAL_EVENTS.get(str(data.get("status")), "JobFailed")
                                progress.update(bar, description=f"{name} {LABELS[finals[job_id]]}")
                                if finals[job_id] == "JobFailed" and not quiet:
                                    progress.console.print(
                                        f"[red]{name}: {data.get('error_code')}: {data.get('message')}"
                                    )
                                return
                    except GatewayError as exc:
                        # Another gateway behind the same address may not know a job queued a moment ago yet.
                        if exc.code != ErrorCode.JOB_NOT_FOUND or attempt == FOLLOW_ATTEMPTS - 1:
                            raise
                    except ConnectionError:
                        if attempt == FOLLOW_ATTEMPTS - 1:
                            raise
                    # The stream broke off (a gateway restarted): a new one replays what the tables hold first.
                    await asyncio.sleep(1.0)

            await asyncio.gather(*(one(job_id, name) for job_id, name in names.items()))
        return finals

    async def print_events(self, *, as_json: bool) -> None:
        """Print every job's events (``GET /events``, without page text) until interrupted: one line each."""
        async for event, data in self.events("/events"):
            if as_json:
                print(json.dumps({"event": event, **data}), flush=True)
                continue
            detail = ""
            if event == "page":
                detail = f"page {data.get('page_no')} {data.get('status')} {data.get('engine') or ''}".rstrip()
            elif event == "start":
                detail = f"{data.get('total_pages')} pages"
            elif event in ("complete", "error"):
                detail = str(data.get("status"))
            print(f"{datetime.now():%H:%M:%S} {event:<13} {data.get('job_id')} {detail}", flush=True)
