"""Logging for every pagewire process: one line a record, plain for people or JSON for collectors, tagged
with the job and page being worked on.

Only entry points call :func:`configure_logging`; library code logs through
``logging.getLogger(__name__)``. :func:`log_context` tags the records made
inside a block with a job id and page number, and the handler's
:class:`LogContextFilter` copies them onto each record.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

_JOB_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("pagewire_job_id", default=None)
_PAGE_NO: contextvars.ContextVar[int | None] = contextvars.ContextVar("pagewire_page_no", default=None)


@contextlib.contextmanager
def log_context(job_id: str | None = None, page_no: int | None = None) -> Iterator[None]:
    """Tag every log record made inside the block (this task, and threads started with
    :func:`asyncio.to_thread`, which copies the context) with the job id and page."""
    job_token = _JOB_ID.set(job_id) if job_id is not None else None
    page_token = _PAGE_NO.set(page_no) if page_no is not None else None
    try:
        yield
    finally:
        if page_token is not None:
            _PAGE_NO.reset(page_token)
        if job_token is not None:
            _JOB_ID.reset(job_token)


class LogContextFilter(logging.Filter):
    """Adds ``job_id`` and ``page`` attributes (None outside a :func:`log_context`) to each record.

    Attach it to the handler; a JSON formatter then writes them as fields.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            record.job_id = _JOB_ID.get()
        if not hasattr(record, "page"):
            record.page = _PAGE_NO.get()
        return True


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(LogContextFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for noisy in ("aiormq", "aio_pika", "botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _OneLineFormatter(logging.Formatter):
    """Plain lines, one a record: line breaks inside a message (a hostile name quoted in an error) are
    escaped, so no message can forge a line of its own. A traceback keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).replace("\r", "\\r").replace("\n", "\\n")


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in ("job_id", "page"):
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)
