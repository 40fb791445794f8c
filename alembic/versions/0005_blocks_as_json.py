"""A page's boxes stored as json (its text as written), not jsonb (parsed into a binary tree).

Nothing queries inside ``blocks``: it is written once a page and read back whole
(``result.json``, the page cache). Parsing it into jsonb was about half of
PostgreSQL's CPU in the recorder bench (60 boxes a page). ``number_disagreements``
stays jsonb: the README queries it with ``jsonb_array_elements``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("pages", "page_cache")


def upgrade() -> None:
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN blocks TYPE json USING blocks::json")


def downgrade() -> None:
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN blocks TYPE jsonb USING blocks::jsonb")
