"""The status database: create it where it is missing, and run the Alembic migrations (``pagewire migrate``)."""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from alembic.config import Config

from alembic import command

T = TypeVar("T")

_INSTALLED = Path(__file__).resolve().parent / "migrations"
ALEMBIC_DIR = _INSTALLED if _INSTALLED.is_dir() else Path(__file__).resolve().parent.parent / "alembic"
"""The migration scripts: inside the package where pagewire is installed, at the top of a source tree."""


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


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even when an event loop already runs here.

    ``asyncio.run`` cannot nest, and the CLI, the dev stack and the test
    fixtures call these helpers from both worlds, so the coroutine gets its
    own loop on its own thread.
    """
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(asyncio.run(factory()))
        except BaseException as exc:  # re-raised on the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="pagewire-database")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def _asyncpg_dsn(database_url: str, database: str | None = None) -> tuple[str, str]:
    """(plain libpq DSN for asyncpg, database name) from a SQLAlchemy URL, optionally for another database."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    name = url.database
    if not name:
        raise ValueError(f"no database name in {url.render_as_string(hide_password=True)}")
    # asyncpg speaks libpq URLs: drop SQLAlchemy's "+asyncpg" driver suffix.
    target = url.set(drivername="postgresql", database=database or name)
    return target.render_as_string(hide_password=False), name


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _asyncpg() -> Any:
    # asyncpg ships no type hints; importing it by name keeps mypy quiet whether
    # or not the project's mypy config lists it among the untyped modules.
    return importlib.import_module("asyncpg")


def ensure_database(database_url: str) -> bool:
    """Create the database named in ``database_url`` if it is missing; True when created.

    ``database_url`` is SQLAlchemy-style (``postgresql+asyncpg://...``). Connects
    to the server's ``postgres`` database to do it.
    """
    asyncpg = _asyncpg()
    admin_dsn, name = _asyncpg_dsn(database_url, "postgres")

    async def create() -> bool:
        conn = await asyncpg.connect(admin_dsn)
        try:
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                return False
            # CREATE DATABASE takes no parameters: quote the identifier instead.
            try:
                await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
            except asyncpg.DuplicateDatabaseError:
                return False  # created concurrently by someone else
            return True
        finally:
            await conn.close()

    return run_async(create)


def drop_database(database_url: str) -> bool:
    """Drop the database named in ``database_url`` (closing its sessions); True when it existed."""
    asyncpg = _asyncpg()
    admin_dsn, name = _asyncpg_dsn(database_url, "postgres")

    async def drop() -> bool:
        conn = await asyncpg.connect(admin_dsn)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                return False
            # WITH (FORCE) (PostgreSQL 13+) ends sessions a test may have leaked.
            await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")
            return True
        finally:
            await conn.close()

    return run_async(drop)
