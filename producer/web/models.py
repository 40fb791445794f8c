"""The gateway's request and response models: what the OpenAPI document shows of its routes."""

from __future__ import annotations

import logging
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.fields import JobId, MetaValue, Name, Text
from schemas.messages import JobOptions, Source
from schemas.tables import JobStatus

log = logging.getLogger(__name__)


class DeepSeekStatus(StrEnum):
    """The status words of DeepSeek-OCR's job server that pagewire's own do not cover."""

    PROCESSING = "processing"
    COMPLETED = "completed"


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
    job_id: JobId | None = None
    priority: int = Field(default=0, ge=0, le=9)
    submitted_by: Name | None = None
    metadata: dict[Name, MetaValue] = Field(default_factory=dict, max_length=32)


class JobAccepted(BaseModel):
    """A job was queued: follow it at ``links``."""

    job_id: str
    status: Literal["queued"] = "queued"
    links: dict[str, str]


class CancelRequest(BaseModel):
    """``POST /jobs/{id}/cancel``: why, for the record."""

    model_config = ConfigDict(extra="forbid")

    reason: Text = ""


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
    result_bucket: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expired_at: datetime | None = Field(default=None, description="when retention deleted its objects")
    links: dict[str, str] = Field(default_factory=dict)
    # The fields slimgest's and DeepSeek-OCR's clients read, beside pagewire's own (docs/http.md).
    filename: str | None = Field(default=None, description="the uploaded or dropped file's name")
    progress: float = Field(default=0.0, ge=0, le=100, description="percent done, 0 to 100")
    processed_pages: int = Field(default=0, description="pages done (read or failed)")
    completed_at: datetime | None = Field(default=None, description="when the job ended (finished_at)")
    has_result: bool = Field(default=False, description="the assembled result can be fetched")
    error: str | None = Field(default=None, description="why the job failed, was cancelled or lost pages")
    pagewire_status: JobStatus | None = Field(
        default=None, description="pagewire's status word, always (status may use DeepSeek's; docs/http.md)"
    )


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
    """``GET /jobs/{id}``: the row and the status of each page.

    ``status`` is pagewire's word, except for a job created through DeepSeek-OCR's
    ``POST /jobs/create``: there it is DeepSeek's (``processing``, and ``completed``
    for ``completed_with_errors``), so DeepSeek's clients end their poll loops.
    """

    status: JobStatus | DeepSeekStatus  # type: ignore[assignment]
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


class DeepSeekAccepted(BaseModel):
    """``POST /jobs/create`` (DeepSeek-OCR's door): the job was queued."""

    success: Literal[True] = True
    job_id: str
    message: str
    status: Literal["queued"] = "queued"
    links: dict[str, str] = Field(default_factory=dict)


class DeepSeekMetadata(BaseModel):
    """``GET /jobs/{id}/metadata``: what DeepSeek-OCR's clients read about a finished job, and pagewire's figures."""

    job_id: str
    filename: str | None = None
    status: str
    pagewire_status: JobStatus
    total_pages: int | None = None
    processed_pages: int = 0
    pages_ok: int = 0
    pages_failed: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    processed_at: datetime | None = Field(default=None, description="when the job ended")
    processing_time_seconds: float | None = Field(default=None, description="from start (or queueing) to end")
    options: dict[str, Any] | None = None
    prompt: str | None = Field(default=None, description="the prompt sent; pagewire's engines take none")
    result_formats: list[str] = Field(default_factory=list)


class RetryAccepted(BaseModel):
    """``POST /jobs/{id}/retry``: the pages that failed for good, queued again."""

    job_id: str
    pages: list[int]


class Cancelled(BaseModel):
    """``DELETE /jobs/{id}`` of a job that has not ended: it is cancelled (DeepSeek-OCR's answer)."""

    success: Literal[True] = True
    job_id: str
    status: Literal["cancelling"] = "cancelling"
    message: str


class ServiceStatus(BaseModel):
    """``GET /`` for a program (slimgest's service status): workers on the task queues and tasks waiting."""

    status: Literal["ok", "degraded"]
    workers: dict[str, int] = Field(description="alive: consumers on the task queue now; total: the most seen")
    queue_size: int = Field(description="page tasks waiting in the task queues")


class BatchImage(BaseModel):
    """One rendered page of ``POST /process-batch-stream``."""

    page_number: int = Field(ge=0)
    image_base64: str = Field(description="a PNG or JPEG (TIFF too), base64")


class BatchRequest(BaseModel):
    """``POST /process-batch-stream``: pages already rendered, read as one job."""

    images: list[BatchImage] = Field(min_length=1, max_length=64)


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
}
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "server-sent events"}
}
