"""Drop folder claims and job expiry: dropfolder_claims, jobs.expired_at.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
OUTCOMES = ("processed", "failed", "vanished")


def upgrade() -> None:
    # One row per object version a drop-folder watcher took. The primary key is the
    # claim: INSERT ... ON CONFLICT DO NOTHING lets exactly one watcher win it.
    op.create_table(
        "dropfolder_claims",
        sa.Column("bucket", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("etag", sa.Text, nullable=False),
        # LastModified tells a re-drop of identical bytes (same etag) from the object already handled.
        sa.Column("last_modified", TS, nullable=False),
        sa.Column("job_id", sa.Text, nullable=False, unique=True),
        sa.Column("claimed_by", sa.Text, nullable=False),
        sa.Column("claimed_at", TS, nullable=False),
        sa.Column("published_at", TS),
        sa.Column("done_at", TS),
        sa.Column("outcome", sa.Text),
        sa.Column("target_key", sa.Text),
        sa.Column("error_code", sa.Text),
        sa.PrimaryKeyConstraint("bucket", "key", "etag", "last_modified"),
        sa.CheckConstraint(f"outcome IS NULL OR outcome IN {OUTCOMES!r}", name="dropfolder_claims_outcome_valid"),
    )
    # Stale claims (a watcher died mid-object) are looked up by age among the unfinished.
    op.create_index(
        "dropfolder_claims_open", "dropfolder_claims", ["claimed_at"], postgresql_where=sa.text("done_at IS NULL")
    )
    # A tombstone: the job row stays, its objects in S3 are gone.
    op.add_column("jobs", sa.Column("expired_at", TS))
    op.create_index("jobs_finished_unexpired", "jobs", ["finished_at"], postgresql_where=sa.text("expired_at IS NULL"))


def downgrade() -> None:
    op.drop_index("jobs_finished_unexpired", table_name="jobs")
    op.drop_column("jobs", "expired_at")
    op.drop_index("dropfolder_claims_open", table_name="dropfolder_claims")
    op.drop_table("dropfolder_claims")
