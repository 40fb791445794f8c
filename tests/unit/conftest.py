"""Helpers for the unit tests of the pdfium adapter, the engines and the layout.

Small PDFs are made in the test itself (pdfium can write them), so a test
shows its input; the shared corpus is used where real files matter.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import pypdfium2 as pdfium
import pytest

from consumer.pdf import PDFIUM_LOCK
from tools.samples import TextRun, add_text, encrypted_pdf, text_pdf, write_pdf, zero_page_pdf


def corpus_dir() -> Path:
    """The shared test corpus: ``PAGEWIRE_CORPUS_DIR`` or ``/work/shared/corpus`` beside the checkout."""
    return Path(os.environ.get("PAGEWIRE_CORPUS_DIR") or Path(__file__).resolve().parents[3] / "shared" / "corpus")


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The corpus directory; skips the test when it is not there."""
    path = corpus_dir()
    if not (path / "manifest.json").is_file():
        pytest.skip(f"no test corpus at {path} (set PAGEWIRE_CORPUS_DIR)")
    return path


make_pdf = text_pdf
"""``make_pdf(pages, size=..., font_size=..., rotation=...)``: born-digital pages of text runs."""


def image_text_pdf(
    runs: list[TextRun],
    *,
    image_box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
    text_mode: int = 0,
    text_first: bool = False,
    size: tuple[float, float] = (612.0, 792.0),
) -> bytes:
    """A one-page PDF with a grey image over ``image_box`` (page fractions, origin top-left) and text runs.

    ``text_mode`` is the text render mode (3: invisible, as scanners write
    their OCR layer); ``text_first`` paints the text before the image, so the
    image hides it.
    """
    from PIL import Image

    width, height = size
    x0, y0, x1, y1 = image_box
    with PDFIUM_LOCK:
        doc = pdfium.PdfDocument.new()
        try:
            page = doc.new_page(width, height)

            if text_first:
                add_text(doc, page, runs, render_mode=text_mode)
            image = pdfium.PdfImage.new(doc)
            bitmap = pdfium.PdfBitmap.from_pil(Image.new("RGB", (40, 50), (200, 200, 200)))
            image.set_bitmap(bitmap)
            bitmap.close()
            w, h = (x1 - x0) * width, (y1 - y0) * height
            image.set_matrix(pdfium.PdfMatrix().scale(w, h).translate(x0 * width, (1 - y1) * height))
            page.insert_obj(image)
            if not text_first:
                add_text(doc, page, runs, render_mode=text_mode)
            page.gen_content()
            page.close()
            out = io.BytesIO()
            doc.save(out)
        finally:
            doc.close()
    return out.getvalue()


def broken_page_pdf() -> bytes:
    """A PDF that opens, with two pages in its page tree, the second of which does not exist."""
    return write_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R 5 0 R] /Count 2 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
        ]
    )


# Fixtures hand the helpers to tests: test modules do not import conftest
# (tests/ is not a package, and two conftest modules would clash by name).

MakePdf = Callable[..., bytes]


@pytest.fixture(name="make_pdf")
def make_pdf_fixture() -> MakePdf:
    """:func:`make_pdf`: ``make_pdf(pages, size=..., font_size=..., rotation=...) -> bytes``."""
    return make_pdf


@pytest.fixture(name="image_text_pdf")
def image_text_pdf_fixture() -> MakePdf:
    """:func:`image_text_pdf`: ``image_text_pdf(runs, image_box=..., text_mode=..., text_first=...) -> bytes``."""
    return image_text_pdf


@pytest.fixture(name="encrypted_pdf")
def encrypted_pdf_fixture() -> bytes:
    """A one-page PDF that needs the user password ``secret``."""
    return encrypted_pdf()


@pytest.fixture(name="zero_page_pdf")
def zero_page_pdf_fixture() -> bytes:
    """A valid PDF with no pages."""
    return zero_page_pdf()


@pytest.fixture(name="broken_page_pdf")
def broken_page_pdf_fixture() -> bytes:
    """A PDF whose second page is missing."""
    return broken_page_pdf()
