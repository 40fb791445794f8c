"""The messages pagewire carries: job requests, page tasks and events.

JSON on the wire, ``content_type=application/json``; every body has a ``type``
and a ``schema_version``. ``schemas/json/`` holds the JSON Schema generated
from these models (``python -m schemas.generate``), for producers written in
other languages; a test fails when it drifts.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

import pydantic_core
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from schemas.errors import ErrorCode, PermanentError
from schemas.fields import (
    Bucket,
    Instant,
    JobId,
    Key,
    MetaValue,
    Name,
    PageText,
    Text,
    is_job_id,
)

T = TypeVar("T", bound=BaseModel)
P = TypeVar("P")

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})


class Engine(StrEnum):
    """Which engine reads a page. ``auto`` picks per page."""

    AUTO = "auto"
    TEXT = "text"
    RAPIDOCR = "rapidocr"
    RAPIDOCR_GPU = "rapidocr-gpu"
    """rapidocr's models on onnxruntime's CUDA provider: the CPU engine's text, on a GPU."""
    NEMOTRON = "nemotron"
    TESSERACT = "tesseract"
    SIM = "sim"
    """A simulated device: no text, a GPU's timing (tests and benchmarks of the batched pipeline)."""


class OutputFormat(StrEnum):
    """Assembled result files the recorder writes to S3."""

    MD = "md"
    JSON = "json"


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class Source(_Model):
    """Where the PDF lies in S3."""

    bucket: Bucket
    key: Key
    etag: Name | None = Field(
        default=None,
        description="the object's version; in a PageTask, the version its planner counted and hashed, which a worker"
        " that has it cached reads without asking S3",
    )
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


def _unique_formats(formats: list[OutputFormat]) -> list[OutputFormat]:
    # A set in meaning, a list on the wire (JSON has none): the recorder writes one file per entry, so a
    # repeat is dropped here, and the enum's order makes two requests that differ only in order equal.
    return [f for f in OutputFormat if f in formats]


OutputFormats = Annotated[
    list[OutputFormat],
    # At most one entry per format before the repeats go: a long list is refused, not walked.
    Field(max_length=len(OutputFormat), json_schema_extra={"uniqueItems": True}),
    AfterValidator(_unique_formats),
]

Metadata = Annotated[dict[Name, MetaValue], Field(max_length=32)]
"""A few short labels for the producer's own use; stored with the job."""


class JobOptions(_Model):
    """How to read the document."""

    engine: Engine = Engine.AUTO
    dpi: int = Field(default=150, ge=36, le=600)
    first_page: int | None = Field(default=None, ge=1, description="1-based, inclusive")
    last_page: int | None = Field(default=None, ge=1, description="1-based, inclusive")
    output_formats: OutputFormats = Field(default_factory=lambda: [OutputFormat.MD, OutputFormat.JSON])

    @model_validator(mode="after")
    def _range_ordered(self) -> JobOptions:
        if self.first_page and self.last_page and self.first_page > self.last_page:
            raise ValueError("first_page is after last_page")
        return self


class JobRequest(_Model):
    """A request to read one PDF already stored in S3. Published to ``{prefix}.jobs``."""

    type: Literal["JobRequest"] = "JobRequest"
    schema_version: int = SCHEMA_VERSION
    job_id: JobId = Field(default_factory=_new_id)
    source: Source
    options: JobOptions = Field(default_factory=JobOptions)
    priority: int = Field(default=0, ge=0, le=9, description=">= 5 goes to the high-priority lane")
    idempotency_key: Name | None = Field(
        default=None, description="the same key gives the same job (its id is derived from it)"
    )
    deadline: Instant | None = Field(default=None, description="work still to do after it is dropped")
    submitted_by: Name | None = None
    submitted_at: Instant = Field(default_factory=_now)
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _job_id_from_key(cls, data: Any) -> Any:
        # Derived, not random: a request sent twice with one key, by any producer, is one job.
        if isinstance(data, dict) and not data.get("job_id") and data.get("idempotency_key"):
            data = {**data, "job_id": idempotent_job_id(str(data["idempotency_key"]))}
        return data


class PageTask(_Model):
    """A run of pages of one job for one OCR consumer. Published to ``{prefix}.tasks``."""

    type: Literal["PageTask"] = "PageTask"
    schema_version: int = SCHEMA_VERSION
    task_id: Name = Field(default_factory=_new_id)
    job_id: JobId
    source: Source
    first_page: int = Field(ge=1)
    last_page: int = Field(ge=1)
    options: JobOptions
    priority: int = Field(default=0, ge=0, le=9)
    deadline: Instant | None = None


# --- events (fanout exchange ``{prefix}.events``) ---------------------------


class _Event(_Model):
    schema_version: int = SCHEMA_VERSION
    event_id: Name = Field(default_factory=_new_id)
    job_id: JobId
    occurred_at: Instant = Field(default_factory=_now)


class JobQueued(_Event):
    """The producer stored the PDF and its request was confirmed by the broker."""

    type: Literal["JobQueued"] = "JobQueued"
    source: Source
    options: JobOptions
    priority: int = 0
    submitted_by: Name | None = None
    metadata: Metadata = Field(default_factory=dict)


class JobStarted(_Event):
    """The planner opened the PDF and queued its page tasks."""

    type: Literal["JobStarted"] = "JobStarted"
    source: Source
    options: JobOptions
    total_pages: int = Field(ge=1, description="pages to read (after the page range)")
    first_page: int = Field(ge=1)
    last_page: int = Field(ge=1)
    tasks: int = Field(
        ge=0,
        description=(
            "page tasks the planner queued (pages from the page cache need none);"
            " in auto mode a worker may hand a task's OCR pages on as tasks of their own"
        ),
    )
    cached_pages: int = Field(default=0, ge=0, description="pages answered from the page cache")
    priority: int = Field(default=0, ge=0, le=9)
    idempotency_key: Name | None = None
    deadline: Instant | None = None


class TextSource(StrEnum):
    """Where a page's text came from: its text layer, OCR, or both merged."""

    TEXT = "text"
    OCR = "ocr"
    HYBRID = "hybrid"


class NumberDisagreement(_Model):
    """A number, amount or date the text layer and OCR read differently (or only one of them has)."""

    kind: Name = Field(description="date, currency or number")
    text_layer: PageText | None
    ocr: PageText | None
    text_layer_offset: int | None = None
    ocr_offset: int | None = None


BBOX_DECIMALS = 4
"""Decimal places of a box's fractions: 1/10,000 of the page (0.08 pt on a Letter page, a sixth of a pixel
at 150 dpi). Longer fractions only cost bytes in every event, row and result."""


def page_fraction(value: float) -> float:
    """A coordinate as a box holds it: clamped to the page (0..1) and rounded to :data:`BBOX_DECIMALS`."""
    return round(min(1.0, max(0.0, float(value))), BBOX_DECIMALS)


class Block(_Model):
    """A piece of text on the page with its box, in page fractions (0..1, origin top-left)."""

    text: PageText
    bbox: tuple[float, float, float, float] = Field(
        description="x0, y0, x1, y1 as fractions of the page, rounded to 4 decimal places"
    )
    confidence: float = Field(ge=0.0, le=1.0)


class PageCompleted(_Event):
    """One page was read."""

    type: Literal["PageCompleted"] = "PageCompleted"
    job_id: JobId
    page_no: int = Field(ge=1)
    text: PageText
    blocks: list[Block] = Field(default_factory=list)
    confidence: float = Field(ge=0.0, le=1.0)
    engine: Engine
    text_source: TextSource = Field(default=TextSource.TEXT, description="text layer, OCR, or both merged")
    rotation: int = Field(default=0, description="degrees the page was turned to be read (OCR)")
    number_disagreements: list[NumberDisagreement] = Field(
        default_factory=list, description="where the text layer and OCR both read the page: numbers that differ"
    )
    duration_ms: float = Field(ge=0)
    render_ms: float = Field(default=0, ge=0)
    worker: Name
    attempt: int = Field(default=1, ge=1)


class PageFailed(_Event):
    """One page could not be read. ``final`` is false while it will be tried again."""

    type: Literal["PageFailed"] = "PageFailed"
    page_no: int = Field(ge=1)
    error_code: ErrorCode
    message: Text
    attempt: int = Field(ge=1)
    final: bool
    worker: Name


class JobCompleted(_Event):
    """Every page has a final result; the assembled files are in S3."""

    type: Literal["JobCompleted"] = "JobCompleted"
    pages_ok: int = Field(ge=0)
    pages_failed: int = Field(ge=0)
    result_keys: dict[Name, Key] = Field(
        default_factory=dict, max_length=len(OutputFormat), description="format -> S3 key"
    )
    bucket: Name


class JobFailed(_Event):
    """The job as a whole failed (bad input, limits)."""

    type: Literal["JobFailed"] = "JobFailed"
    error_code: ErrorCode
    message: Text


class JobCancelled(_Event):
    """The job was cancelled; remaining pages are skipped."""

    type: Literal["JobCancelled"] = "JobCancelled"
    reason: Text = ""


TERMINAL_EVENTS = (JobCompleted, JobFailed, JobCancelled)
"""The events that end a job: after one of them, nothing more happens to it."""


Event = Annotated[
    JobQueued | JobStarted | PageCompleted | PageFailed | JobCompleted | JobFailed | JobCancelled,
    Field(discriminator="type"),
]
Message = Annotated[
    JobRequest
    | PageTask
    | JobQueued
    | JobStarted
    | PageCompleted
    | PageFailed
    | JobCompleted
    | JobFailed
    | JobCancelled,
    Field(discriminator="type"),
]
EVENT_TYPES: tuple[type[BaseModel], ...] = (
    JobQueued,
    JobStarted,
    PageCompleted,
    PageFailed,
    JobCompleted,
    JobFailed,
    JobCancelled,
)
ALL_MESSAGE_TYPES: tuple[type[BaseModel], ...] = (JobRequest, PageTask, *EVENT_TYPES)

_message_adapter: TypeAdapter[Message] = TypeAdapter(Message)
_event_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def _load(body: bytes, max_bytes: int) -> dict[str, Any]:
    _check_size(body, max_bytes)
    try:
        # pydantic-core's parser: several times faster than json.loads on a page of boxes.
        data = pydantic_core.from_json(body)
    except ValueError as exc:
        raise PermanentError(ErrorCode.MALFORMED_MESSAGE, f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PermanentError(ErrorCode.MALFORMED_MESSAGE, "body is not a JSON object")
    _check_version(data.get("schema_version"))
    return data


def _check_size(body: bytes, max_bytes: int) -> None:
    if len(body) > max_bytes:
        raise PermanentError(ErrorCode.MESSAGE_TOO_LARGE, f"message of {len(body)} bytes exceeds {max_bytes}")


def _check_version(version: Any) -> None:
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise PermanentError(
            ErrorCode.UNSUPPORTED_SCHEMA_VERSION,
            f"schema_version {version!r} is not one of {sorted(SUPPORTED_SCHEMA_VERSIONS)}",
        )


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']} ({exc.error_count()} error(s))"


def _parse(validate_json: Callable[[bytes], P], body: bytes, max_bytes: int) -> P:
    """Parse and validate ``body`` in one pass of pydantic-core, the fault sorted as :func:`_load` sorts it.

    One pass costs about half of JSON to dicts and then validating those, and every event the
    recorder takes is parsed here. A body that fails goes through :func:`_load` to be told apart
    (too large, not JSON, not an object, a schema version unknown); what is left is malformed.
    """
    _check_size(body, max_bytes)
    try:
        message = validate_json(body)
    except ValidationError as exc:
        _load(body, max_bytes)
        raise PermanentError(ErrorCode.MALFORMED_MESSAGE, _validation_message(exc)) from exc
    _check_version(getattr(message, "schema_version", None))
    return message


def parse_message(body: bytes, max_bytes: int = 16 * 1024 * 1024) -> Message:
    """Parse any pagewire message, raising :class:`PermanentError` with a clear code."""
    return _parse(_message_adapter.validate_json, body, max_bytes)


def parse_event(body: bytes, max_bytes: int = 16 * 1024 * 1024) -> Event:
    """Parse an event from the fanout exchange."""
    return _parse(_event_adapter.validate_json, body, max_bytes)


def parse_as(model: type[T], body: bytes, max_bytes: int = 16 * 1024 * 1024) -> T:
    """Parse a body that must be one message type (``JobRequest`` on the jobs queue, say)."""
    return _parse(model.model_validate_json, body, max_bytes)


def job_id_of(body: bytes) -> str | None:
    """Best effort: the job id of a body that failed to parse, so its failure can be recorded."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    job_id = data.get("job_id") if isinstance(data, dict) else None
    # The messages' own rule: an id it lets through must make a valid JobFailed.
    return job_id if is_job_id(job_id) else None


CACHE_WORKER = "page-cache"
"""The ``worker`` of a page answered from the page cache instead of read again."""


def options_key(options: JobOptions) -> str:
    """The options that shape a page's text, as the page cache keys them."""
    return f"{options.engine}:{options.dpi}"


def parse_job_request(body: bytes, message_id: str | None, max_bytes: int = 16 * 1024 * 1024) -> JobRequest:
    """A ``JobRequest`` off the jobs queue; one without a job id or key gets an id derived from the message.

    A random default would give a request delivered twice two job ids.
    """
    data = _load(body, max_bytes)
    if not data.get("job_id") and not data.get("idempotency_key"):
        seed = message_id or hashlib.sha256(body).hexdigest()
        data["job_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"pagewire:message:{seed}"))
    try:
        return JobRequest.model_validate(data)
    except ValidationError as exc:
        raise PermanentError(ErrorCode.MALFORMED_MESSAGE, _validation_message(exc)) from exc


def idempotent_job_id(idempotency_key: str) -> str:
    """The job id that an idempotency key stands for."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pagewire:idempotency:{idempotency_key}"))


def completion_event_id(job_id: str, kind: str) -> str:
    """A deterministic event id for a job's terminal event, so a re-sent one dedupes."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pagewire:{job_id}:{kind}"))


def to_body(message: BaseModel) -> bytes:
    """Serialise a message for the wire."""
    return message.model_dump_json().encode()
