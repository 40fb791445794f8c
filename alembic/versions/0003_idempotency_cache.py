"""Idempotency, deadlines and the page cache: jobs.idempotency_key/deadline/source_sha256, job_plans, page_cache.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("idempotency_key", sa.Text))
    op.add_column("jobs", sa.Column("deadline", TS))
    op.add_column("jobs", sa.Column("source_sha256", sa.Text))
    op.create_index(
        "jobs_idempotency_key", "jobs", ["idempotency_key"], postgresql_where=sa.text("idempotency_key IS NOT NULL")
    )
    # The planner's record of the jobs it has planned: a request delivered again is not planned twice.
    op.create_table(
        "job_plans",
        sa.Column("job_id", sa.Text, primary_key=True),
        sa.Column("tasks", sa.Integer, nullable=False),
        sa.Column("cached_pages", sa.Integer, nullable=False, server_default="0"),
        sa.Column("planned_at", TS, nullable=False),
    )
    # Completed pages by content, page and the options that shape the text: a PDF read again costs nothing.
    op.create_table(
        "page_cache",
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("page_no", sa.Integer, nullable=False),
        sa.Column("options_key", sa.Text, nullable=False),
        sa.Column("engine", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("blocks", JSONB),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("sha256", "options_key", "page_no"),
    )


def downgrade() -> None:
    op.drop_table("page_cache")
    op.drop_table("job_plans")
    op.drop_index("jobs_idempotency_key", table_name="jobs")
    op.drop_column("jobs", "source_sha256")
    op.drop_column("jobs", "deadline")
    op.drop_column("jobs", "idempotency_key")
