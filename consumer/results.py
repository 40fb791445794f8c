"""Assembling a job's pages into ``result.md`` and ``result.json`` (pure functions)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from consumer.layout import order_blocks
from schemas.messages import Block


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


def lines_of(blocks: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """A page's boxes grouped into lines in reading order (columns, then top to bottom), each with
    its text, the box around it and its mean confidence."""
    boxes = [Block.model_validate(b) for b in blocks or [] if "bbox" in b]
    out = []
    for line in order_blocks(boxes):
        out.append(
            {
                "text": " ".join(b.text for b in line),
                "bbox": [
                    min(b.bbox[0] for b in line),
                    min(b.bbox[1] for b in line),
                    max(b.bbox[2] for b in line),
                    max(b.bbox[3] for b in line),
                ],
                "confidence": round(sum(b.confidence for b in line) / len(line), 4),
            }
        )
    return out


def assemble_json(job: dict[str, Any], pages: list[PageRow]) -> str:
    """The whole job as JSON: job fields, then each page with its boxes as read (``blocks``)
    and those boxes as lines in reading order (``lines``), with coordinates and confidence."""
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
                "lines": lines_of(p.blocks),
                "error_code": p.error_code,
                "error_message": p.error_message,
            }
            for p in sorted(pages, key=lambda p: p.page_no)
        ],
    }
    return json.dumps(document, ensure_ascii=False, indent=1)
