"""How a job's row is shown: pagewire's fields, plus the ones slimgest's and DeepSeek-OCR's clients read.

Both services' clients can point at pagewire unchanged, and share paths with
pagewire's own (``GET /jobs/{id}``, ``GET /jobs``), so every answer is a
superset: pagewire's fields stay and theirs are added.

One field cannot be both: ``status``. pagewire says ``running`` and
``completed_with_errors``; DeepSeek's clients poll ``status`` until
``completed``, ``failed`` or ``cancelled``, and would poll a job that
completed with errors for ever. So a job remembers the door it came in by
(``metadata.api``): one created through DeepSeek's ``POST /jobs/create``
answers ``GET /jobs/{id}`` with DeepSeek's words (``processing``, and
``completed`` for ``completed_with_errors``, whose result is there to
download; ``processing`` still for the moment between the end and the
result files being written); every other job, and every list, keeps
pagewire's words.
``pagewire_status`` always carries pagewire's word.

A download's name comes from the job's file name, which a client chose:
:func:`attachment` is the one way a route names a download.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from typing import Any
from urllib.parse import quote

from schemas.tables import JobStatus

API_KEY = "api"
"""``metadata`` key naming the door a job came in by, where it is not pagewire's own."""
DEEPSEEK = "deepseek"

_DEEPSEEK_WORDS: dict[str, str] = {
    JobStatus.RUNNING: "processing",
    JobStatus.COMPLETED_WITH_ERRORS: "completed",
}
ENDED_WITH_RESULT = frozenset({JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_ERRORS})
_ERROR_STATUSES = frozenset({JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.COMPLETED_WITH_ERRORS})


def filename_of(row: dict[str, Any]) -> str | None:
    """The name the job's file had: an upload's or submit's ``filename``, a drop-folder key's last part."""
    metadata = row.get("metadata") or {}
    if metadata.get("filename"):
        return str(metadata["filename"])
    if metadata.get("dropfolder_key"):
        return posixpath.basename(str(metadata["dropfolder_key"]))
    key = row.get("source_key")
    return posixpath.basename(key) if key else None


def download_name(name: str) -> str:
    """``name`` fit to name a download: its last part, without control or format characters; may be empty.

    Only the last part of a path, of either kind of separator: a browser that
    took ``../../etc/x.md`` at its word would write outside its downloads
    folder. Format characters go too: a right-to-left override (U+202E)
    between ``report`` and ``fdp.exe`` shows the name as ``reportexe.pdf``.
    Dots and spaces at the ends go, so that nothing is left of ``..``, and no
    name is hidden.
    """
    base = re.split(r"[/\\]", name)[-1]
    kept = "".join(c for c in base if unicodedata.category(c) not in ("Cc", "Cf"))
    return kept.strip(" .")


def attachment(filename: str) -> dict[str, str]:
    """The ``Content-Disposition`` header of a download named ``filename`` (cleaned by :func:`download_name`).

    HTTP headers are Latin-1 at best, so a name beyond ASCII goes twice
    (RFC 6266): ``filename`` with an ASCII stand-in for older clients, and
    ``filename*`` in UTF-8, percent-encoded (RFC 5987), which the others prefer.
    """
    name = download_name(filename) or "download"
    # Accents dropped (é -> e), then whatever is not printable ASCII, or would need escaping in a
    # quoted string, or could be read as a percent-escape, becomes "_": 報告.pdf -> __.pdf, not .pdf.
    bare = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    fallback = re.sub(r'[^\x20-\x7e]|["\\%]', "_", bare)
    value = f'attachment; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return {"Content-Disposition": value}


def is_deepseek(row: dict[str, Any]) -> bool:
    return (row.get("metadata") or {}).get(API_KEY) == DEEPSEEK


def deepseek_status(status: str) -> str:
    """DeepSeek-OCR's word for a pagewire status."""
    return _DEEPSEEK_WORDS.get(status, status)


def with_client_fields(row: dict[str, Any], *, dialect: bool = False) -> dict[str, Any]:
    """The row with slimgest's and DeepSeek's fields added; ``dialect``: ``status`` in the job's own words."""
    status = row.get("status") or JobStatus.QUEUED
    total = row.get("total_pages")
    done = row.get("pages_done") or 0
    ended = status in ENDED_WITH_RESULT
    progress = 100.0 if ended else (min(100.0, 100.0 * done / total) if total else 0.0)
    error = None
    if status in _ERROR_STATUSES:
        error = row.get("error_message") or row.get("error_code") or str(status)
    extra = {
        "filename": filename_of(row),
        "progress": round(progress, 1),
        "processed_pages": done,
        "completed_at": row.get("finished_at"),
        "has_result": bool(ended and (row.get("result_keys") or {}).get("md")),
        "error": error,
        "pagewire_status": status,
    }
    shown = {**row, **extra}
    if dialect and is_deepseek(row):
        # The recorder marks a job completed a moment before it has written the result files; a
        # DeepSeek client downloads as soon as it reads "completed", so until then it reads "processing".
        ended_without_result = status in ENDED_WITH_RESULT and not row.get("result_keys")
        shown["status"] = "processing" if ended_without_result else deepseek_status(status)
    return shown
