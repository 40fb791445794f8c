"""The pdfium adapter: open a PDF, judge its text layer, read it, render pages.

Everything pagewire asks of pdfium goes through this module. pdfium is not
thread-safe, not even across different documents (it keeps global state such
as font caches and the last-error slot), so every pdfium call here holds the
one module-level :data:`PDFIUM_LOCK`. The OCR consumer renders in worker
threads while the event loop may open another document; without the lock they
would corrupt each other.

pypdfium2 closes its handles from finalizers when they are garbage collected,
which can happen on any thread at any time, i.e. outside the lock. So this
module closes every page, text page and bitmap explicitly while it holds the
lock and never leaves a pdfium object for the garbage collector.

Bad input becomes a :class:`~schemas.errors.PermanentError` with a stable code:
``EMPTY_FILE``, ``NOT_A_PDF``, ``TRUNCATED_PDF``, ``ENCRYPTED_PDF``,
``NO_PAGES``, ``TOO_MANY_PAGES``, ``PAGE_TOO_LARGE`` and ``RENDER_FAILED``.
"""

from __future__ import annotations

import math
import os
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from schemas.errors import ErrorCode, PermanentError
from schemas.messages import Block

__all__ = [
    "PDFIUM_LOCK",
    "PdfDocument",
    "PdfInfo",
    "TextLayer",
    "has_real_text",
    "inspect_pdf",
]

PDFIUM_LOCK = threading.Lock()
"""Held around every pdfium call in the process (pdfium is not thread-safe)."""

# PDF readers accept a header that does not start at byte 0 (some writers put
# junk before it); 1024 bytes is the window Acrobat documents and pdfium uses.
_HEADER_WINDOW = 1024
_PDF_HEADER = b"%PDF-"

_LOAD_ERRORS = {
    pdfium_c.FPDF_ERR_FILE: "file not found or unreadable",
    pdfium_c.FPDF_ERR_FORMAT: "damaged or not a PDF",
    pdfium_c.FPDF_ERR_PAGE: "page not found or content error",
}

# has_real_text thresholds, see its docstring.
_MIN_ALNUM = 10
_MAX_BAD_SHARE = 0.25
_MIN_ALNUM_SHARE = 0.1


@dataclass(frozen=True)
class PdfInfo:
    """What the planner needs to know about a PDF."""

    page_count: int
    text_pages: tuple[bool, ...]
    """Per page (index 0 is page 1): does the text layer hold real text."""


@dataclass(frozen=True)
class TextLayer:
    """A page's own text layer: the text, its runs with boxes, and its length."""

    text: str
    blocks: list[Block]
    chars: int


def has_real_text(text: str) -> bool:
    """Judge whether a text layer holds real text worth trusting over OCR.

    The rule, on the characters that are not whitespace:

    * at least 10 of them are letters or digits (``str.isalnum``, any script),
      so an empty layer, a stray glyph or a lone page number is not real text;
    * at most a quarter of them are "bad": control characters, private-use or
      unassigned code points, surrogates, U+FFFD/U+FFFE. Fonts without a usable
      character map come out of pdfium as exactly such garbage, while real
      pages with symbol fonts or maths stay well under a quarter (measured:
      at most 10% on the corpus);
    * at least a tenth of them are letters or digits, so a layer of punctuation
      or symbols alone does not pass (dot leaders in a table of contents do:
      about 24%).
    """
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return False
    alnum = sum(1 for c in visible if c.isalnum())
    bad = sum(1 for c in visible if _is_bad_char(c))
    return alnum >= _MIN_ALNUM and bad <= _MAX_BAD_SHARE * len(visible) and alnum >= _MIN_ALNUM_SHARE * len(visible)


def _is_bad_char(c: str) -> bool:
    return c in "\ufffd\ufffe" or unicodedata.category(c) in ("Cc", "Co", "Cn", "Cs")


def _normalise_text(text: str) -> str:
    # pdfium ends lines with CRLF and, rarely, a bare CR; the corpus expected
    # text (and everything downstream) uses plain LF.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _check_header(head: bytes) -> None:
    if not head:
        raise PermanentError(ErrorCode.EMPTY_FILE, "the file is empty (0 bytes)")
    if _PDF_HEADER not in head[:_HEADER_WINDOW]:
        raise PermanentError(ErrorCode.NOT_A_PDF, "no %PDF- header in the first 1024 bytes")


def _open_unlocked(source: Path | bytes) -> pdfium.PdfDocument:
    """Open a document, mapping pdfium's load errors to permanent error codes. Caller holds the lock."""
    if isinstance(source, Path):
        with source.open("rb") as f:
            head = f.read(_HEADER_WINDOW)
    else:
        head = source[:_HEADER_WINDOW]
    _check_header(head)
    # The raw load call, not pypdfium2's constructor: that one treats a
    # document with no pages as a load failure and reports whatever error an
    # earlier call left in pdfium's global last-error slot.
    if isinstance(source, Path):
        raw = pdfium_c.FPDF_LoadDocument(os.fsencode(source), None)
    else:
        raw = pdfium_c.FPDF_LoadMemDocument64(source, len(source), None)
    if not raw:
        code = pdfium_c.FPDF_GetLastError()
        if code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
            raise PermanentError(ErrorCode.ENCRYPTED_PDF, "the PDF is encrypted and needs a password")
        # The header said PDF, so a format error means a damaged or cut-off file.
        reason = _LOAD_ERRORS.get(code, f"error {code}")
        raise PermanentError(ErrorCode.TRUNCATED_PDF, f"pdfium cannot load the PDF ({reason})")
    return pdfium.PdfDocument(raw)


def _check_page_count(count: int, max_pages: int | None) -> None:
    if count <= 0:
        raise PermanentError(ErrorCode.NO_PAGES, "the PDF has no pages")
    if max_pages is not None and count > max_pages:
        raise PermanentError(ErrorCode.TOO_MANY_PAGES, f"the PDF has {count} pages, more than the limit of {max_pages}")


def _load_page_unlocked(doc: pdfium.PdfDocument, page_no: int) -> pdfium.PdfPage:
    try:
        return doc[page_no - 1]
    except pdfium.PdfiumError as exc:
        raise PermanentError(ErrorCode.TRUNCATED_PDF, f"page {page_no} cannot be loaded: {exc}") from exc


def inspect_pdf(data: bytes, *, max_pages: int) -> PdfInfo:
    """Open a PDF held in memory, check it against the limits and judge each page's text layer.

    Cheap (about 1 ms per page): it extracts each page's text once and applies
    :func:`has_real_text`; it renders nothing. Raises :class:`PermanentError`
    with ``EMPTY_FILE``, ``NOT_A_PDF``, ``TRUNCATED_PDF``, ``ENCRYPTED_PDF``,
    ``NO_PAGES`` or ``TOO_MANY_PAGES``.
    """
    with PDFIUM_LOCK:
        doc = _open_unlocked(data)
        try:
            count = len(doc)
            _check_page_count(count, max_pages)
            text_pages = []
            for page_no in range(1, count + 1):
                page = _load_page_unlocked(doc, page_no)
                try:
                    textpage = page.get_textpage()
                    try:
                        text_pages.append(has_real_text(textpage.get_text_range()))
                    finally:
                        textpage.close()
                except pdfium.PdfiumError as exc:
                    raise PermanentError(
                        ErrorCode.TRUNCATED_PDF, f"page {page_no} has no readable text page: {exc}"
                    ) from exc
                finally:
                    page.close()
        finally:
            doc.close()
    return PdfInfo(page_count=count, text_pages=tuple(text_pages))


class PdfDocument:
    """An open PDF (from a file path or bytes); a context manager. Every method holds :data:`PDFIUM_LOCK`.

    Pages are numbered from 1. Raises the same :class:`PermanentError` codes as
    :func:`inspect_pdf` for bad input (without a page limit).
    """

    def __init__(self, source: Path | bytes) -> None:
        """Open ``source``; a :class:`Path` is read by pdfium directly, not loaded into memory.

        An unreadable path raises :class:`OSError` (a fault of the caller's cache, not of the PDF).
        """
        with PDFIUM_LOCK:
            doc = _open_unlocked(source)
            try:
                count = len(doc)
                _check_page_count(count, None)
            except BaseException:
                doc.close()
                raise
        self._doc: pdfium.PdfDocument | None = doc
        # pdfium reads a document held in memory lazily, straight from this buffer: keep it alive.
        self._source = source
        self.page_count: int = count

    def __enter__(self) -> PdfDocument:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _page_unlocked(self, page_no: int) -> pdfium.PdfPage:
        if self._doc is None:
            raise ValueError("the document is closed")
        if not 1 <= page_no <= self.page_count:
            raise ValueError(f"page {page_no} is not in 1..{self.page_count}")
        return _load_page_unlocked(self._doc, page_no)

    def page_size(self, page_no: int) -> tuple[float, float]:
        """Width and height of the page as displayed (rotation applied), in points."""
        with PDFIUM_LOCK:
            page = self._page_unlocked(page_no)
            try:
                width, height = page.get_size()
            finally:
                page.close()
        return float(width), float(height)

    def text_layer(self, page_no: int) -> TextLayer:
        """The page's own text, with one block per text run pdfium reports (a line or part of one).

        The text is pdfium's text in content order with line ends as ``\\n``;
        boxes are fractions of the displayed page (origin top-left). A page
        without text gives an empty layer, not an error.
        """
        with PDFIUM_LOCK:
            page = self._page_unlocked(page_no)
            try:
                textpage = page.get_textpage()
                try:
                    text = _normalise_text(textpage.get_text_range())
                    blocks = _blocks_unlocked(page, textpage)
                    chars = textpage.count_chars()
                finally:
                    textpage.close()
            except pdfium.PdfiumError as exc:
                raise PermanentError(ErrorCode.TRUNCATED_PDF, f"page {page_no} has no readable text: {exc}") from exc
            finally:
                page.close()
        return TextLayer(text=text, blocks=blocks, chars=chars)

    def render(self, page_no: int, *, dpi: int, max_megapixels: float) -> npt.NDArray[np.uint8]:
        """Render a page to an RGB ``uint8`` array of shape (height, width, 3).

        The pixel size is checked before anything is drawn, so a huge page
        costs nothing: ``PAGE_TOO_LARGE`` when width x height at ``dpi``
        exceeds ``max_megapixels`` million pixels. pdfium failures give
        ``RENDER_FAILED``.
        """
        scale = dpi / 72.0
        with PDFIUM_LOCK:
            page = self._page_unlocked(page_no)
            try:
                width, height = page.get_size()
                # The same rounding as pypdfium2's render (up), so the check matches the bitmap it would draw.
                pixels = math.ceil(width * scale) * math.ceil(height * scale)
                if pixels > max_megapixels * 1e6:
                    raise PermanentError(
                        ErrorCode.PAGE_TOO_LARGE,
                        f"page {page_no} is {width:.0f}x{height:.0f} pt: {pixels / 1e6:.1f} megapixels at {dpi} dpi,"
                        f" more than {max_megapixels:g}",
                    )
                try:
                    # rev_byteorder: pdfium draws BGR; ask for RGB directly rather than copying.
                    bitmap = page.render(scale=scale, rev_byteorder=True)
                    try:
                        # Copy: the array would otherwise share memory owned by the bitmap.
                        image: npt.NDArray[np.uint8] = np.array(bitmap.to_numpy()[:, :, :3], dtype=np.uint8)
                    finally:
                        bitmap.close()
                except pdfium.PdfiumError as exc:
                    raise PermanentError(ErrorCode.RENDER_FAILED, f"page {page_no} failed to render: {exc}") from exc
            finally:
                page.close()
        return image

    def close(self) -> None:
        """Release the document; safe to call twice."""
        with PDFIUM_LOCK:
            if self._doc is not None:
                self._doc.close()
                self._doc = None
                self._source = b""


def _blocks_unlocked(page: pdfium.PdfPage, textpage: pdfium.PdfTextPage) -> list[Block]:
    """One block per run of text on a line, in page fractions. Caller holds the lock."""
    left, bottom, right, top = page.get_bbox()
    width, height = right - left, top - bottom
    if width <= 0 or height <= 0:
        return []
    rotation = page.get_rotation()
    blocks = []
    for x0, y0, x1, y1 in _merge_rects([textpage.get_rect(i) for i in range(textpage.count_rects())]):
        text = " ".join(_normalise_text(textpage.get_text_bounded(x0, y0, x1, y1)).split())
        if not text:
            continue
        # PDF space has its origin bottom-left; blocks use top-left.
        u0, u1 = (x0 - left) / width, (x1 - left) / width
        v0, v1 = (top - y1) / height, (top - y0) / height
        blocks.append(Block(text=text, bbox=_rotate_box((u0, v0, u1, v1), rotation), confidence=1.0))
    return blocks


Rect = tuple[float, float, float, float]


def _merge_rects(rects: list[Rect]) -> list[Rect]:
    """Join pdfium's text rectangles (in text order) that continue one line into one rectangle.

    pdfium gives one rectangle per text object, and some writers (Google Docs)
    place every glyph on its own, which would make one block per letter. Two
    rectangles merge when they overlap vertically by half the smaller height
    and the second starts after the first within 0.8 of the line's height (a
    word space; a column gutter is wider).
    """
    merged: list[Rect] = []
    for rect in rects:
        x0, y0, x1, y1 = rect
        if merged:
            m0, n0, m1, n1 = merged[-1]
            line_height = max(y1 - y0, n1 - n0)
            overlap = min(y1, n1) - max(y0, n0)
            if overlap >= 0.5 * min(y1 - y0, n1 - n0) and x0 >= m1 - 0.2 * line_height and x0 - m1 <= 0.8 * line_height:
                merged[-1] = (m0, min(y0, n0), max(x1, m1), max(y1, n1))
                continue
        merged.append(rect)
    return merged


def _rotate_box(box: tuple[float, float, float, float], rotation: int) -> tuple[float, float, float, float]:
    """Map a box in unrotated page fractions to the page as displayed (``/Rotate`` is clockwise)."""
    u0, v0, u1, v1 = box
    corners: list[tuple[float, float]]
    if rotation == 90:
        corners = [(1 - v0, u0), (1 - v1, u1)]
    elif rotation == 180:
        corners = [(1 - u0, 1 - v0), (1 - u1, 1 - v1)]
    elif rotation == 270:
        corners = [(v0, 1 - u0), (v1, 1 - u1)]
    else:
        corners = [(u0, v0), (u1, v1)]
    xs = [_clamp(x) for x, _ in corners]
    ys = [_clamp(y) for _, y in corners]
    return min(xs), min(ys), max(xs), max(ys)


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))
