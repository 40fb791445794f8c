"""What every ``pagewire`` command shares in what it shows: its exit codes, how a row becomes JSON, the types of
its numeric arguments."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

EXIT_OK: Final = 0
EXIT_JOB_FAILED: Final = 1
"""A job failed or finished with errors, or the command could not do what it was asked."""
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
"""A service (broker, database, S3, gateway) could not be reached."""
EXIT_NOT_FOUND: Final = 4
"""No such job, or its result is not ready."""
EXIT_OF_CODE: Final = {
    "job_not_found": EXIT_NOT_FOUND,
    "result_not_ready": EXIT_NOT_FOUND,
    "storage_unavailable": EXIT_UNREACHABLE,
    # The gateway's answers to a request it refuses, which the direct client refuses as a usage error.
    "job_exists": EXIT_USAGE,
    "invalid_options": EXIT_USAGE,
}
"""The exit code of a command that ends with an error code; any other code: :data:`EXIT_JOB_FAILED`."""


def sentence(text: str) -> str:
    """``text`` with a capital first letter and the rest as written (``str.capitalize`` lowers "HTTP")."""
    return text[:1].upper() + text[1:]


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` (to ``high``), refused as a usage error otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low or (high is not None and value > high):
            within = f"{low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"must be {within}, not {value}")
        return value

    return parse


def seconds(text: str) -> float:
    """An argparse type: a number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


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


FINAL_EVENTS: Final = {
    "completed": "JobCompleted",
    "completed_with_errors": "JobCompleted",
    "failed": "JobFailed",
    "cancelled": "JobCancelled",
}
"""A job's final status -> the terminal event it ended with."""
LABELS: Final = {"JobCompleted": "[green]done", "JobFailed": "[red]failed", "JobCancelled": "cancelled"}
"""What a job's bar says once it has ended, by its terminal event."""


def err_console() -> Console:
    """Where the commands talk to the user (stderr). Lines are not wrapped where stderr is not a terminal,
    so that a log or a script reading it gets a job id whole, on the line that names it."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def job_bars(*, quiet: bool) -> Progress:
    """The progress display of commands that follow jobs: a bar a job, pages done of its total, on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("pages"),
        TimeElapsedColumn(),
        console=err_console(),
        disable=quiet,
        transient=False,
    )
