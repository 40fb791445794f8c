"""Assembling a job's pages into ``result.md`` and ``result.json`` (pure functions)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PageRow:
    """One row of the ``pages`` table, as the assembly needs it."""

    page_no: int
    status: str
    engine: str | None
    text: str | None
    blocks: list[dict[str, Any]] | None
    confidence: float | None
    error_code: str | None
    error_message: str | None


def assemble_markdown(pages: list[PageRow]) -> str:
    """The pages' text in page order, each under a comment that names it.

    A failed page keeps its place with its error code, so a reader sees the
    gap instead of silently missing text.
    """
    parts: list[str] = []
    for page in sorted(pages, key=lambda p: p.page_no):
        if page.status == "completed":
            parts.append(f"<!-- page {page.page_no} -->\n\n{(page.text or '').strip()}\n")
        else:
            parts.append(f"<!-- page {page.page_no} failed: {page.error_code}: {page.error_message} -->\n")
    return "\n".join(parts)


def assemble_json(job: dict[str, Any], pages: list[PageRow]) -> str:
    """The whole job as JSON: job fields, then each page with its blocks (boxes and confidence)."""
    document = {
        "job_id": job["job_id"],
        "status": job["status"],
        "total_pages": job.get("total_pages"),
        "pages_ok": job.get("pages_ok"),
        "pages_failed": job.get("pages_failed"),
        "source": {"bucket": job.get("source_bucket"), "key": job.get("source_key")},
        "pages": [
            {
                "page_no": p.page_no,
                "status": p.status,
                "engine": p.engine,
                "confidence": p.confidence,
                "text": p.text,
                "blocks": p.blocks or [],
                "error_code": p.error_code,
                "error_message": p.error_message,
            }
            for p in sorted(pages, key=lambda p: p.page_no)
        ],
    }
    return json.dumps(document, ensure_ascii=False, indent=1)
