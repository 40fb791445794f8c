"""The PostgreSQL status tables, as SQLAlchemy Core.

The DDL itself lives in the Alembic migrations (``alembic/versions``); these
definitions are what the code queries with. A test checks the two agree.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_JOB_STATUSES = frozenset(
    {JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_ERRORS, JobStatus.FAILED, JobStatus.CANCELLED}
)


class PageStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    RETRYING = "retrying"


metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("job_id", Text, primary_key=True),
    Column("status", Text, nullable=False),
    Column("source_bucket", Text),
    Column("source_key", Text),
    Column("source_etag", Text),
    Column("options", JSONB),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("submitted_by", Text),
    Column("metadata", JSONB),
    Column("total_pages", Integer),
    Column("first_page", Integer),
    Column("last_page", Integer),
    Column("tasks", Integer),
    Column("pages_ok", Integer, nullable=False, server_default="0"),
    Column("pages_failed", Integer, nullable=False, server_default="0"),
    Column("error_code", Text),
    Column("error_message", Text),
    Column("result_bucket", Text),
    Column("result_keys", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("completion_published_at", DateTime(timezone=True)),
    Column("expired_at", DateTime(timezone=True)),
    Column("idempotency_key", Text),
    Column("deadline", DateTime(timezone=True)),
    Column("source_sha256", Text),
)

pages = Table(
    "pages",
    metadata,
    Column("job_id", Text, ForeignKey("jobs.job_id", ondelete="CASCADE"), nullable=False),
    Column("page_no", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("engine", Text),
    Column("text", Text),
    Column("blocks", JSON),  # written and read whole: json, not jsonb (migration 0005)
    Column("confidence", Float),
    Column("duration_ms", Float),
    Column("render_ms", Float),
    Column("worker", Text),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("error_code", Text),
    Column("error_message", Text),
    Column("event_id", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("text_source", Text),
    Column("rotation", SmallInteger, nullable=False, server_default="0"),
    Column("number_disagreements", JSONB, nullable=False, server_default="[]"),
    Column("number_disagreement_count", Integer, nullable=False, server_default="0"),
    PrimaryKeyConstraint("job_id", "page_no"),
)

applied_events = Table(
    "applied_events",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("job_id", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

job_plans = Table(
    "job_plans",
    metadata,
    Column("job_id", Text, primary_key=True),
    Column("tasks", Integer, nullable=False),
    Column("cached_pages", Integer, nullable=False, server_default="0"),
    Column("planned_at", DateTime(timezone=True), nullable=False),
)


class TombstoneReason(StrEnum):
    DELETED = "deleted"
    EXPIRED = "expired"


job_tombstones = Table(
    "job_tombstones",
    metadata,
    Column("job_id", Text, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("buried_at", DateTime(timezone=True), nullable=False),
)
"""Jobs deleted or expired: the recorder drops their events, so nothing brings them back (migration 0006)."""

page_cache = Table(
    "page_cache",
    metadata,
    Column("sha256", Text, nullable=False),
    Column("page_no", Integer, nullable=False),
    Column("options_key", Text, nullable=False),
    Column("engine", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("blocks", JSON),  # written and read whole: json, not jsonb (migration 0005)
    Column("confidence", Float, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("sha256", "options_key", "page_no"),
)

job_owners = Table(
    "job_owners",
    metadata,
    Column("job_id", Text, primary_key=True),
    # The name of the API key that queued the job over HTTP, never the key; NULL: a gateway run without keys.
    Column("owner", Text),
    Column("claimed_at", DateTime(timezone=True), nullable=False),
)
"""Who queued a job over HTTP. The gateway writes the row before the job exists anywhere else (migration 0007);
jobs queued by messages or the drop folder have none."""

dropfolder_claims = Table(
    "dropfolder_claims",
    metadata,
    Column("bucket", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("etag", Text, nullable=False),
    Column("last_modified", DateTime(timezone=True), nullable=False),
    Column("job_id", Text, nullable=False, unique=True),
    Column("claimed_by", Text, nullable=False),
    Column("claimed_at", DateTime(timezone=True), nullable=False),
    Column("published_at", DateTime(timezone=True)),
    Column("done_at", DateTime(timezone=True)),
    Column("outcome", Text),
    Column("target_key", Text),
    Column("error_code", Text),
    PrimaryKeyConstraint("bucket", "key", "etag", "last_modified"),
)
