"""Who queued a job over HTTP: job_owners (job_id, owner, claimed_at).

The gateway writes the row itself, before it uploads or publishes anything:
the insert claims the job id (one gateway wins it, ON CONFLICT DO NOTHING),
and the job is never visible without its owner. A table of its own rather than
a column of ``jobs``: the recorder, which writes ``jobs`` from events, needs
no change, and ownership does not travel in messages anyone on the broker
could write. Jobs queued by messages or the drop folder have no row: they
belong to no key (admin keys see them).

A trigger deletes a job's row with the job, whoever deletes it (the gateway's
DELETE, retention, an operator's SQL), so the table cannot outgrow ``jobs``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_owners",
        sa.Column("job_id", sa.Text, primary_key=True),
        # The API key's name, never the key; NULL: queued through a gateway run without keys.
        sa.Column("owner", sa.Text),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    )
    # GET /jobs of a submit key lists its own jobs only.
    op.create_index("job_owners_owner", "job_owners", ["owner", "job_id"])
    op.execute(
        """
        CREATE FUNCTION job_owners_follow_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM job_owners WHERE job_id = OLD.job_id;
            RETURN OLD;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER job_owners_follow_jobs AFTER DELETE ON jobs "
        "FOR EACH ROW EXECUTE FUNCTION job_owners_follow_jobs()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS job_owners_follow_jobs ON jobs")
    op.execute("DROP FUNCTION IF EXISTS job_owners_follow_jobs()")
    op.drop_index("job_owners_owner", table_name="job_owners")
    op.drop_table("job_owners")
