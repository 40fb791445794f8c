"""The tesseract engine: its TSV read into line blocks (pure), a missing binary, and one real page (marked ``ocr``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

from consumer.engines import TSV_COLUMNS, TesseractEngine, UprightEngine, make_engine, tsv_to_blocks
from consumer.pdf import PdfDocument
from schemas.errors import ErrorCode, PermanentError, RetryableError
from schemas.messages import Engine
from tools.samples import lines, scanned_pdf

# What `tesseract IMG - --psm 3 tsv` prints (tabs), shortened: two lines in one paragraph, a
# second block with one line, and the page, block, paragraph and line rows (conf -1) between.
TSV = "\n".join(
    "\t".join(str(cell) for cell in row)
    for row in [
        TSV_COLUMNS,
        (1, 1, 0, 0, 0, 0, 0, 0, 1000, 500, -1, ""),
        (2, 1, 1, 0, 0, 0, 100, 50, 400, 70, -1, ""),
        (3, 1, 1, 1, 0, 0, 100, 50, 400, 70, -1, ""),
        (4, 1, 1, 1, 1, 0, 100, 50, 400, 30, -1, ""),
        (5, 1, 1, 1, 1, 1, 100, 50, 150, 30, 96.5, "Hello"),
        (5, 1, 1, 1, 1, 2, 260, 52, 240, 28, 91.5, "world,"),
        (4, 1, 1, 1, 2, 0, 100, 90, 300, 30, -1, ""),
        (5, 1, 1, 1, 2, 1, 100, 90, 300, 30, 80.0, "again"),
        (5, 1, 1, 1, 2, 2, 420, 90, 10, 30, 95.0, " "),
        (2, 1, 2, 0, 0, 0, 600, 300, 300, 40, -1, ""),
        (3, 1, 2, 1, 0, 0, 600, 300, 300, 40, -1, ""),
        (4, 1, 2, 1, 1, 0, 600, 300, 300, 40, -1, ""),
        (5, 1, 2, 1, 1, 1, 600, 300, 300, 40, 50.0, "$1,234.50"),
    ]
)


def test_tsv_words_become_one_block_per_line_in_page_fractions() -> None:
    blocks = tsv_to_blocks(TSV + "\n", 1000, 500)
    assert [b.text for b in blocks] == ["Hello world,", "again", "$1,234.50"]
    first = blocks[0]
    # The union of the line's word boxes, as fractions of the 1000 x 500 image.
    assert first.bbox == pytest.approx((0.1, 0.1, 0.5, 0.16))
    assert first.confidence == pytest.approx(0.94)
    # A blank word (tesseract gives some with a confidence) adds nothing, not even to the box.
    assert blocks[1].bbox == pytest.approx((0.1, 0.18, 0.4, 0.24))
    assert blocks[1].confidence == pytest.approx(0.8)
    assert blocks[2].confidence == pytest.approx(0.5)


def test_tsv_without_words_or_with_bad_rows_gives_no_blocks() -> None:
    assert tsv_to_blocks("", 100, 100) == []
    header_only = TSV.splitlines()[0]
    assert tsv_to_blocks(header_only, 100, 100) == []
    assert tsv_to_blocks("5\t1\t1\t1\t1\t1\tx\t0\t10\t10\t90\tword\nshort\trow", 100, 100) == []


def test_tesseract_is_unavailable_without_its_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    with pytest.raises(PermanentError) as info:
        make_engine(Engine.TESSERACT)
    assert info.value.code == ErrorCode.ENGINE_UNAVAILABLE
    assert "tesseract" in info.value.message


def test_tesseract_is_unavailable_on_an_empty_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PermanentError) as info:
        TesseractEngine()
    assert info.value.code == ErrorCode.ENGINE_UNAVAILABLE


needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="no tesseract binary here")


@needs_tesseract
def test_tesseract_without_the_language_data_is_unavailable() -> None:
    with pytest.raises(PermanentError) as info:
        TesseractEngine(language="qqq")
    assert info.value.code == ErrorCode.ENGINE_UNAVAILABLE
    assert "qqq" in info.value.message


@needs_tesseract
def test_a_failing_tesseract_is_a_retryable_ocr_failure() -> None:
    engine = TesseractEngine()
    engine.psm = 99  # tesseract refuses an unknown segmentation mode
    with pytest.raises(RetryableError) as info:
        engine.read(np.full((40, 40, 3), 255, dtype=np.uint8))
    assert info.value.code == ErrorCode.OCR_FAILED


TEXT = [
    "Invoice 2041 for the harbour office",
    "Total due on 12 March: 1,480.25 EUR",
    "Paid by transfer to account 55-0193",
]


@pytest.mark.ocr
@needs_tesseract
def test_tesseract_reads_a_generated_scanned_page() -> None:
    with PdfDocument(scanned_pdf([lines(TEXT)])) as doc:
        image = doc.render(1, dpi=150, max_megapixels=50)
    engine = make_engine(Engine.TESSERACT)
    assert isinstance(engine, UprightEngine)
    assert engine.name == Engine.TESSERACT
    page = engine.read(image)
    want = " ".join(TEXT)
    assert Levenshtein.normalized_distance(" ".join(page.text.split()), want) < 0.03
    # One line a block, in reading order (the layout may set a blank line between spaced lines).
    assert len([line for line in page.text.splitlines() if line.strip()]) == 3
    assert len(page.blocks) == 3
    first = page.blocks[0]
    # Lines start an inch (72 pt of a 612 pt wide page) from the left edge.
    assert first.bbox[0] == pytest.approx(72 / 612, abs=0.02)
    assert 0.8 < page.confidence <= 1.0
    assert page.rotation == 0
