"""Configuration from ``PAGEWIRE_*`` environment variables, one class per role.

Built once at each entry point and passed down; nothing else reads
``os.environ``. The defaults point at the local development stack
(``pagewire dev up``), so a shell with no variables set talks to it.
"""

from __future__ import annotations

import os
import socket
from enum import StrEnum
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.messages import Engine
from schemas.names import Topology

SOURCE_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pagewire" / "sources"
"""Where planners and workers keep source PDFs by default: one directory, so that a worker on the
planner's host reads the copy the planner fetched (the tasks name its etag) instead of fetching it again."""


OcrAlphabet = Literal["latin", "all"]
"""What rapidocr may read: ``latin`` (Latin, Greek, punctuation, symbols) or ``all`` (Chinese and Japanese too)."""


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class Settings(BaseSettings):
    """What every role needs: where the broker, database and S3 are, and the names."""

    model_config = SettingsConfigDict(env_prefix="PAGEWIRE_", extra="ignore", frozen=True)

    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    database_url: SecretStr = SecretStr("postgresql+asyncpg://postgres@127.0.0.1:5432/pagewire")
    s3_endpoint_url: str | None = "http://127.0.0.1:8333"
    s3_region: str = "us-east-1"
    s3_bucket: str = "pagewire"
    s3_access_key_id: str = "pagewire"
    s3_secret_access_key: SecretStr = SecretStr("pagewire-secret")
    s3_allowed_buckets: list[str] = Field(
        default_factory=list, description="buckets jobs may read; empty: s3_bucket only"
    )
    prefix: str = Field(default="pagewire", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    delivery_limit: int = Field(default=4, ge=0, description="redeliveries before a message is dead-lettered")
    log_format: LogFormat = LogFormat.TEXT
    log_level: str = "INFO"
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    metrics_port: int = Field(default=9100, ge=0, le=65535, description="/metrics, /healthz, /readyz; 0: off")
    metrics_host: str = Field(default="0.0.0.0", description="address the metrics server binds")

    @classmethod
    def from_variables(cls, variables: dict[str, str]) -> Self:
        """Settings from a map of ``PAGEWIRE_*`` variables (a stack's env), ignoring this process's environment."""
        fields = {key.removeprefix("PAGEWIRE_").lower(): value for key, value in variables.items()}
        return cls.model_validate(fields)

    @property
    def topology(self) -> Topology:
        return Topology(prefix=self.prefix, delivery_limit=self.delivery_limit)

    @property
    def allowed_buckets(self) -> frozenset[str]:
        return frozenset(self.s3_allowed_buckets or [self.s3_bucket])


class PlannerSettings(Settings):
    """The planner: opens each PDF, checks limits, splits it into page tasks."""

    max_pdf_bytes: int = Field(default=256 * 1024 * 1024, ge=1, description="larger sources fail with file_too_large")
    max_pages: int = Field(default=5000, ge=1, description="longer documents fail with too_many_pages")
    text_pages_per_task: int = Field(default=32, ge=1, description="pages per task where the text layer suffices")
    ocr_pages_per_task: int = Field(default=1, ge=1, description="pages per task that need OCR")
    inspect_budget_s: float = Field(
        default=60.0, gt=0, description="opening and checking a PDF; past it: pdf_too_complex"
    )
    inspect_memory_mb: int = Field(default=2048, ge=0, description="address space of the inspecting process; 0: no cap")
    cache_dir: Path = Field(default=SOURCE_CACHE_DIR, description="source PDFs on disk, by etag; shared with workers")


class WorkerSettings(Settings):
    """An OCR consumer: renders and reads pages, one task at a time."""

    engine: Engine = Field(default=Engine.RAPIDOCR, description="the OCR engine behind auto on this worker")
    max_pdf_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    max_megapixels: float = Field(
        default=50.0, gt=0, description="pages larger at the job's DPI fail with page_too_large"
    )
    ocr_threads: int = Field(
        default=0, ge=0, description="onnxruntime intra-op threads; 0: the cores this process may use"
    )
    ocr_alphabet: OcrAlphabet = Field(
        default="latin",
        description="what rapidocr reads: latin (Latin, Greek, punctuation and symbols; a fifth cheaper)"
        " or all (Chinese and Japanese too)",
    )
    cache_dir: Path = Field(
        default=SOURCE_CACHE_DIR, description="source PDFs on disk, by etag; shared with the planner"
    )
    cache_max_bytes: int = Field(default=2 * 1024**3, ge=0)
    worker_name: str = Field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    retry_backoff_s: float = Field(default=1.0, ge=0)
    ocr_pages_per_task: int = Field(
        default=1, ge=1, description="pages per task that need OCR; auto tasks hand theirs on in tasks this size"
    )
    text_budget_s: float = Field(default=5.0, gt=0, description="a page's text layer; past it: pdf_too_complex")
    ocr_budget_s: float = Field(default=180.0, gt=0, description="render and OCR of a page; past it: pdf_too_complex")
    # rapidocr on OpenVINO maps up to about 5.6 GB (2.2 GB resident); under 8 GB it stays on onnxruntime.
    page_memory_mb: int = Field(default=8192, ge=0, description="address space of the page process; 0: no cap")
    nemotron_ocr_model_dir: Path | None = Field(
        default=None, validation_alias="NEMOTRON_OCR_MODEL_DIR", description="nemotron-ocr weights"
    )
    gpu_batch_pages: int = Field(
        default=0,
        ge=0,
        le=256,
        description="pages the engine reads at once, rendered ahead by render_processes; 0: a page at a time",
    )
    render_processes: int = Field(default=2, ge=1, le=64, description="with gpu_batch_pages: processes that render")
    sim_batch_ms: float = Field(default=50.0, ge=0, description="the sim engine's time a batch")
    sim_page_ms: float = Field(default=10.0, ge=0, description="the sim engine's time a page")


class RecorderSettings(Settings):
    """The recorder: applies events to PostgreSQL and assembles results."""

    batch_size: int = Field(default=500, ge=1, description="events applied in one transaction at most")
    batch_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="... and events of this many bytes at most (one may be larger)"
    )
    prefetch_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="events the recorder holds unapplied, about: its prefetch count follows their mean size",
    )
    batch_wait_ms: int = Field(default=20, ge=0, description="a batch closes once no event has come for this long")
    batch_max_wait_ms: int = Field(
        default=100, ge=0, description="... or this long after its first event, whichever comes first"
    )
    db_retry_max_s: float = Field(default=30.0, gt=0, description="longest wait between database retries")
    stall_after_s: float = Field(
        default=900.0,
        gt=0,
        description="a running job with no event for this long, and no task waiting in the queues, fails as stalled",
    )


class ClientSettings(Settings):
    """``pagewire submit`` and the other user commands."""

    image_max_megapixels: float = Field(
        default=50.0, gt=0, description="an image's frames larger than this: image_too_large"
    )
    image_max_pages: int = Field(default=500, ge=1, description="images with more frames: too_many_pages")
    api_url: str | None = Field(
        default=None, description="run the user commands through this pagewire http gateway instead"
    )
    api_key: SecretStr | None = Field(default=None, description="the gateway's API key, for api_url")
