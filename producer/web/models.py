"""The gateway's request and response models: what the OpenAPI document shows of its routes."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.messages import JobOptions, Source
from schemas.tables import JobStatus

log = logging.getLogger(__name__)


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
    owner: str | None = Field(default=None, description="the name of the API key that queued it; null: no key")
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


class StreamToken(BaseModel):
    """A short-lived token that opens one event stream: ``GET {events}?token={token}``."""

    token: str
    expires_at: datetime
    events: str = Field(description="the stream it opens, token included")


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
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
}
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "server-sent events"}
}
