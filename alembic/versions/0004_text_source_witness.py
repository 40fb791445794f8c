"""Where a page's text came from, its rotation, and the text layer as a witness of OCR's numbers.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("pages", sa.Column("text_source", sa.Text))
    op.create_check_constraint(
        "pages_text_source_valid", "pages", "text_source IS NULL OR text_source IN ('text', 'ocr', 'hybrid')"
    )
    op.add_column("pages", sa.Column("rotation", sa.SmallInteger, nullable=False, server_default="0"))
    op.add_column(
        "pages", sa.Column("number_disagreements", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb"))
    )
    op.add_column("pages", sa.Column("number_disagreement_count", sa.Integer, nullable=False, server_default="0"))
    # "Which pages need a human look?" stays cheap however many pages agree.
    op.create_index(
        "pages_number_disagreements",
        "pages",
        ["job_id", "page_no"],
        postgresql_where=sa.text("number_disagreement_count > 0"),
    )


def downgrade() -> None:
    op.drop_index("pages_number_disagreements", table_name="pages")
    op.drop_column("pages", "number_disagreement_count")
    op.drop_column("pages", "number_disagreements")
    op.drop_column("pages", "rotation")
    op.drop_constraint("pages_text_source_valid", "pages")
    op.drop_column("pages", "text_source")
