"""Finding the events a batch cannot take, so that one bad message never stops the recorder.

A batch's transaction fails as a whole. When PostgreSQL (or the driver, encoding
a parameter) refuses it for its *data*, the fault lies with one or a few events
in it: a NUL in a free-text field, a number out of range, text that is no valid
UTF-8. :func:`isolate` splits the batch in halves, each half in a transaction of
its own, until the events that fail alone are found; every other event commits.
A fault that is not about the data (the server gone, a missing table, a full
disk) is raised unchanged: splitting cannot help and would dead-letter innocent
events, so the recorder retries or exits as before.

Pure, so the splitting is tested with a fake commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

from schemas.errors import ErrorCode
from schemas.fields import clean_text, is_job_id
from schemas.messages import Event, JobFailed, completion_event_id

T = TypeVar("T")
R = TypeVar("R")

# SQLSTATE classes that name the data, not the server: 21 cardinality (one row touched twice in a
# statement), 22 data exception (NUL in text, bad encoding, out of range: the driver reports its own
# encoding errors as 22000 too), 23 integrity constraint, 54 program limit (an index row too large).
_DATA_CLASSES = frozenset({"21", "22", "23", "54"})


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error, where the driver gave one."""
    if not isinstance(exc, DBAPIError):
        return None
    code = getattr(exc.orig, "sqlstate", None)
    return code if isinstance(code, str) else None


def is_data_error(exc: BaseException) -> bool:
    """True when the database refused the statement for the values in it, not for its own state."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return False
    code = sqlstate(exc)
    return code is not None and code[:2] in _DATA_CLASSES


async def isolate(
    items: Sequence[T],
    commit: Callable[[Sequence[T]], Awaitable[R]],
    is_poison: Callable[[BaseException], bool],
    error: BaseException | None = None,
) -> tuple[list[R], list[tuple[T, BaseException]]]:
    """Commit ``items``, splitting them in halves whenever a commit fails with an ``is_poison`` error.

    Returns what each successful commit returned and the items that failed on their own, each with
    its error. ``error``, when given, is what committing all of ``items`` already raised (so that
    commit is not tried again). Any other error is raised as it comes; halves committed before it
    stay committed (applying is idempotent, so the caller may simply try the whole again).

    With k bad items among n, this makes at most about 2 k log2(n) commits.
    """
    if error is None:
        try:
            return [await commit(items)], []
        except Exception as exc:
            if not is_poison(exc):
                raise
            error = exc
    if len(items) <= 1:
        return [], [(item, error) for item in items]
    middle = len(items) // 2
    done, bad = await isolate(items[:middle], commit, is_poison)
    more_done, more_bad = await isolate(items[middle:], commit, is_poison)
    return done + more_done, bad + more_bad


def describe(exc: BaseException) -> str:
    """The first line of the database's complaint (without the statement and its values), sanitised."""
    reason = str(exc.orig) if isinstance(exc, DBAPIError) and exc.orig is not None else str(exc)
    first = reason.strip().splitlines()[0] if reason.strip() else type(exc).__name__
    return clean_text(first, 300)


def unrecordable_failure(event: Event, exc: BaseException) -> JobFailed | None:
    """The ``JobFailed`` that ends the job of an event the recorder cannot record, or None.

    None when the event names no job a producer could have made (its job id itself may be
    the bad data), or when it is this very failure: its fields are sanitised, so it cannot fail
    for the same reason, and sending it again for itself would go round for ever.
    """
    if not is_job_id(event.job_id):
        return None
    event_id = completion_event_id(event.job_id, "event_unrecordable")
    if event.event_id == event_id:
        return None
    return JobFailed(
        event_id=event_id,
        job_id=event.job_id,
        error_code=ErrorCode.EVENT_UNRECORDABLE,
        message=clean_text(
            f"its {event.type} event {event.event_id!r} could not be recorded and was dead-lettered: {describe(exc)}",
            500,
        ),
    )
