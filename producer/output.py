"""What every ``pagewire`` command shares in what it shows: its exit codes and how a row becomes JSON."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

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
