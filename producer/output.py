"""What every ``pagewire`` command shares in what it shows: its exit codes and how a row becomes JSON."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from rich.progress import Progress

EXIT_OK: Final = 0
EXIT_JOB_FAILED: Final = 1
"""A job failed or finished with errors, or the command could not do what it was asked."""
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
"""A service (broker, database, S3, gateway) could not be reached."""
EXIT_NOT_FOUND: Final = 4
"""No such job, or its result is not ready."""


def jsonable(value: Any) -> Any:
    """A status row's value as JSON takes it: times as ISO 8601, intervals as seconds, decimals as floats."""
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "total_seconds"):
        return value.total_seconds()
    if isinstance(value, int | float | str | bool | list | dict) or value is None:
        return value
    return float(value) if hasattr(value, "__float__") else str(value)


LIST_FIELDS: Final = (
    "job_id",
    "status",
    "total_pages",
    "pages_done",
    "percent",
    "pages_per_second",
    "error_code",
    "source_key",
    "submitted_by",
    "created_at",
    "finished_at",
    "expired_at",
    "filename",
)
"""The columns of ``pagewire jobs``, whichever way it reads them (the tables, or a gateway)."""


def job_bars(*, quiet: bool) -> Progress:
    """The progress display of commands that follow jobs: a bar a job, pages done of its total, on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("pages"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=quiet,
        transient=False,
    )
