"""Status tables: jobs, pages, applied_events and the job_progress view.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_STATUSES = ("queued", "running", "completed", "completed_with_errors", "failed", "cancelled")
PAGE_STATUSES = ("completed", "failed", "retrying")
TS = sa.DateTime(timezone=True)

JOB_PROGRESS = """
CREATE VIEW job_progress AS
SELECT
    j.job_id,
    j.status,
    j.total_pages,
    j.pages_ok + j.pages_failed AS pages_done,
    j.pages_ok,
    j.pages_failed,
    CASE WHEN j.total_pages > 0
         THEN round(100.0 * (j.pages_ok + j.pages_failed) / j.total_pages, 1) END AS percent,
    CASE WHEN j.started_at IS NOT NULL
              AND coalesce(j.finished_at, now()) > j.started_at
         THEN round(((j.pages_ok + j.pages_failed)
                     / extract(epoch FROM coalesce(j.finished_at, now()) - j.started_at))::numeric, 2)
    END AS pages_per_second,
    now() - j.created_at AS age,
    coalesce(j.finished_at, now()) - j.created_at AS elapsed,
    j.error_code,
    j.source_bucket,
    j.source_key,
    j.created_at,
    j.started_at,
    j.finished_at
FROM jobs j
"""


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.Text, primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("source_bucket", sa.Text),
        sa.Column("source_key", sa.Text),
        sa.Column("source_etag", sa.Text),
        sa.Column("options", JSONB),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("submitted_by", sa.Text),
        sa.Column("metadata", JSONB),
        sa.Column("total_pages", sa.Integer),
        sa.Column("first_page", sa.Integer),
        sa.Column("last_page", sa.Integer),
        sa.Column("tasks", sa.Integer),
        sa.Column("pages_ok", sa.Integer, nullable=False, server_default="0"),
        sa.Column("pages_failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error_code", sa.Text),
        sa.Column("error_message", sa.Text),
        sa.Column("result_bucket", sa.Text),
        sa.Column("result_keys", JSONB),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("completion_published_at", TS),
        sa.CheckConstraint(f"status IN {JOB_STATUSES!r}", name="jobs_status_valid"),
    )
    op.create_index("jobs_status_created", "jobs", ["status", "created_at"])
    op.create_index("jobs_created", "jobs", ["created_at"])
    op.create_table(
        "pages",
        sa.Column("job_id", sa.Text, sa.ForeignKey("jobs.job_id", ondelete="CASCADE"), nullable=False),
        sa.Column("page_no", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("engine", sa.Text),
        sa.Column("text", sa.Text),
        sa.Column("blocks", JSONB),
        sa.Column("confidence", sa.Float),
        sa.Column("duration_ms", sa.Float),
        sa.Column("render_ms", sa.Float),
        sa.Column("worker", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
        sa.Column("error_code", sa.Text),
        sa.Column("error_message", sa.Text),
        sa.Column("event_id", sa.Text),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("job_id", "page_no"),
        sa.CheckConstraint(f"status IN {PAGE_STATUSES!r}", name="pages_status_valid"),
    )
    op.create_table(
        "applied_events",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("job_id", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("applied_at", TS, nullable=False),
    )
    op.create_index("applied_events_job", "applied_events", ["job_id"])
    op.execute(JOB_PROGRESS)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS job_progress")
    op.drop_table("applied_events")
    op.drop_table("pages")
    op.drop_table("jobs")
