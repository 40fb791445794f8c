"""Runs the Alembic migrations of the status tables (``pagewire migrate``)."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic.config import Config

from alembic import command

ALEMBIC_DIR = Path(__file__).resolve().parent.parent / "alembic"


def _config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    # ConfigParser treats '%' as interpolation; URLs may hold percent-escapes.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database up to ``revision``.

    Alembic's async environment calls ``asyncio.run``, which cannot nest in a
    running event loop; running it on its own thread makes this safe to call
    from sync and async code alike.
    """
    errors: list[BaseException] = []

    def run() -> None:
        try:
            command.upgrade(_config(database_url), revision)
        except BaseException as exc:  # re-raised on the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="alembic-upgrade")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
