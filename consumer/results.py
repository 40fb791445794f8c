"""Assembling a job's pages into ``result.md`` and ``result.json`` (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import pydantic_core

from consumer.layout import order_blocks


class _Box(NamedTuple):
    """A stored box, as reading order needs it."""

    text: str
    bbox: tuple[float, float, float, float]
    confidence: float


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


def markdown_page(page: PageRow) -> str:
    """One page's part of ``result.md``: its text under a comment that names it.

    A failed page keeps its place with its error code, so a reader sees the
    gap instead of silently missing text.
    """
    if page.status == "completed":
        return f"<!-- page {page.page_no} -->\n\n{(page.text or '').strip()}\n"
    return f"<!-- page {page.page_no} failed: {page.error_code}: {page.error_message} -->\n"


def assemble_markdown(pages: list[PageRow]) -> str:
    """The pages' text in page order, each under a comment that names it (:func:`markdown_page`)."""
    return "\n".join(markdown_page(page) for page in sorted(pages, key=lambda p: p.page_no))


def lines_of(blocks: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """A page's boxes grouped into lines in reading order (columns, then top to bottom), each with
    its text, the box around it and its mean confidence."""
    # The rows hold boxes the recorder wrote from validated events: plain tuples are enough to order
    # them, and validating each into a Block again would cost more than the ordering.
    boxes = [_Box(b["text"], tuple(b["bbox"]), b["confidence"]) for b in blocks or [] if "bbox" in b]
    out = []
    for line in order_blocks(boxes):
        if len(line) == 1:
            (box,) = line
            x0, y0, x1, y1 = box.bbox
            text, confidence = box.text, box.confidence
        else:
            x0, y0, x1, y1 = line[0].bbox
            for b in line[1:]:
                x0, y0, x1, y1 = min(x0, b.bbox[0]), min(y0, b.bbox[1]), max(x1, b.bbox[2]), max(y1, b.bbox[3])
            text = " ".join(b.text for b in line)
            confidence = sum(b.confidence for b in line) / len(line)
        out.append({"text": text, "bbox": [x0, y0, x1, y1], "confidence": round(confidence, 4)})
    return out


def json_head(job: dict[str, Any]) -> str:
    """``result.json`` up to its pages: the job's fields, then the pages' list opened (:class:`JsonResult`)."""
    head = pydantic_core.to_json({**_job_fields(job), "pages": []}, indent=1).decode()
    return head.removesuffix("]\n}")


def json_page(page: PageRow) -> str:
    """One page of ``result.json``, indented as an item of the pages' list."""
    document = {
        "page_no": page.page_no,
        "status": page.status,
        "engine": page.engine,
        "confidence": page.confidence,
        "text": page.text,
        "blocks": page.blocks or [],
        "lines": lines_of(page.blocks),
        "error_code": page.error_code,
        "error_message": page.error_message,
    }
    # pydantic's encoder writes what json.dumps(..., ensure_ascii=False, indent=1) writes, about 13
    # times faster (the pure-Python encoder runs once json.dumps is asked to indent). A float may be
    # spelt differently (1e-5 for 1e-05), never with another value. No line of JSON holds a raw line
    # break, so indenting each line indents the page as a nested value.
    return "  " + pydantic_core.to_json(document, indent=1).decode().replace("\n", "\n  ")


class JsonResult:
    """``result.json`` written a page at a time: :meth:`head`, each page's :meth:`page`, then :meth:`tail`.

    What they give, joined, is :func:`assemble_json`'s text, so a job's result can be built and
    uploaded a chunk of pages at a time, in memory bounded by the chunk rather than the job.
    """

    def __init__(self) -> None:
        self.pages = 0

    def head(self, job: dict[str, Any]) -> str:
        return json_head(job)

    def page(self, page: PageRow) -> str:
        self.pages += 1
        return ("\n" if self.pages == 1 else ",\n") + json_page(page)

    def tail(self) -> str:
        return "\n ]\n}" if self.pages else "]\n}"


def _job_fields(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": job["job_id"],
        "status": job["status"],
        "total_pages": job.get("total_pages"),
        "pages_ok": job.get("pages_ok"),
        "pages_failed": job.get("pages_failed"),
        "source": {"bucket": job.get("source_bucket"), "key": job.get("source_key")},
    }


def assemble_json(job: dict[str, Any], pages: list[PageRow]) -> str:
    """The whole job as JSON: job fields, then each page with its boxes as read (``blocks``)
    and those boxes as lines in reading order (``lines``), with coordinates and confidence."""
    result = JsonResult()
    parts = [result.head(job), *(result.page(p) for p in sorted(pages, key=lambda p: p.page_no)), result.tail()]
    return "".join(parts)
