"""Tombstones of deleted and expired jobs: their late events are dropped, their ids stay used.

A job deleted (``DELETE /jobs/{id}``) or expired (``pagewire gc``) keeps one
small row here. The recorder drops any event of a job that has one, so a task
still in flight, a redelivery or a replay cannot bring the job back, and
``pagewire gc`` may then delete the job's ``applied_events`` rows, which would
otherwise grow without end.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_tombstones",
        sa.Column("job_id", sa.Text, primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("buried_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_tombstones")
