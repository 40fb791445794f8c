"""Reading order on the corpus's ``layout/`` pages (docs in ``shared/corpus/LAYOUT.md``).

Born-digital pages: the text layer, put in reading order where its own order is
wrong, against the expected text; the other born-digital pages keep their
layer's order. Scans (marked ``ocr``, seconds a page): rapidocr's boxes in the
layout's order, against tesseract's character error rate on the same scans.
Skipped without the corpus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rapidfuzz.distance import Levenshtein

from consumer import pdf
from consumer.engines import RapidOcrEngine
from consumer.pdf import PdfDocument
from tools.evaluate import layout_reference

# The goals: a born-digital layout page within this of its expected order; a scan no worse than
# tesseract by more than SCAN_SLACK; a class's mean no worse than tesseract's (rounding aside).
BORN_DIGITAL_CER = 0.01
SCAN_SLACK = 0.03
CLASS_SLACK = 0.002


def cer(got: str, want: str) -> float:
    """Edits over the expected characters, on whitespace-normalised text (as ``pagewire eval``)."""
    got_n, want_n = " ".join(got.split()), " ".join(want.split())
    return Levenshtein.distance(got_n, want_n) / max(1, len(want_n))


def entries(corpus: Path, prefix: str) -> list[dict[str, Any]]:
    manifest: list[dict[str, Any]] = json.loads((corpus / "manifest.json").read_text())
    return [e for e in manifest if e["class"].startswith(prefix) and e.get("expected")]


def expected(corpus: Path, entry: dict[str, Any]) -> list[str]:
    pages: list[str] = json.loads((corpus / entry["expected"]).read_text())
    return pages


def test_born_digital_layout_pages_read_in_the_expected_order(corpus: Path) -> None:
    worst: list[tuple[str, int, float]] = []
    for entry in entries(corpus, "born-digital-layout-"):
        with PdfDocument(corpus / entry["file"]) as doc:
            for page_no, want in enumerate(expected(corpus, entry), start=1):
                worst.append((entry["file"], page_no, cer(doc.text_layer(page_no).text, want)))
    assert len(worst) == 14
    assert [w for w in worst if w[2] > BORN_DIGITAL_CER] == []


def test_other_born_digital_pages_keep_their_layers_order(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Their expected text is their layer in its own order: reading order must find nothing to change.
    pages = 0
    for entry in entries(corpus, "born-digital"):
        if entry["class"].startswith("born-digital-layout-"):
            continue
        with PdfDocument(corpus / entry["file"]) as doc:
            for page_no in range(1, min(entry["pages"], 40) + 1):
                ordered = doc.text_layer(page_no).text
                with monkeypatch.context() as m:
                    m.setattr(pdf, "layer_order", lambda boxes: None)
                    own = doc.text_layer(page_no).text
                assert " ".join(ordered.split()) == " ".join(own.split()), (entry["file"], page_no)
                pages += 1
    assert pages > 100


@pytest.fixture(scope="module")
def rapidocr() -> RapidOcrEngine:
    return RapidOcrEngine()


CLASSES = {
    "a": ("dpr-multi-column", "tableformer-paper", "creativity-ml-paper", "ieee-privacy-paper"),
    "b": ("federal-register", "textbook-3col"),
    "c": ("camry-maintenance-log", "aviation-safety-table"),
    "d": ("margin-notes", "faa-handbook-figures", "dmca-summary"),
}
_read: dict[tuple[str, int], float] = {}


def scan_cer(rapidocr: RapidOcrEngine, corpus: Path, name: str, dpi: int) -> float:
    """One scan's CER (its pages summed) as the engine reads it at ``dpi``; each scan read once a run."""
    if (name, dpi) not in _read:
        entry = next(e for e in entries(corpus, "scanned-layout-") if e["file"] == f"layout/{name}-scan.pdf")
        edits = chars = 0
        with PdfDocument(corpus / entry["file"]) as doc:
            for page_no, want in enumerate(expected(corpus, entry), start=1):
                text = rapidocr.read(doc.render(page_no, dpi=dpi, max_megapixels=50.0)).text
                n = len(" ".join(want.split()))
                edits += round(cer(text, want) * n)
                chars += n
        _read[name, dpi] = edits / chars
    return _read[name, dpi]


@pytest.mark.ocr
@pytest.mark.timeout(900)
@pytest.mark.parametrize("dpi", [150, 200])
@pytest.mark.parametrize("cls", sorted(CLASSES))
def test_scans_read_in_order_as_well_as_tesseract(rapidocr: RapidOcrEngine, corpus: Path, cls: str, dpi: int) -> None:
    # Each scan within SCAN_SLACK of tesseract, the class's mean no worse than tesseract's.
    # tesseract 5.3 --psm 3 on the 200-dpi scans: the table in the corpus's LAYOUT.md.
    tesseract = layout_reference(corpus)
    got = {name: scan_cer(rapidocr, corpus, name, dpi) for name in CLASSES[cls]}
    assert {n: g for n, g in got.items() if g > tesseract[f"layout/{n}-scan.pdf"] + SCAN_SLACK} == {}
    mean = sum(got.values()) / len(got)
    reference = sum(tesseract[f"layout/{n}-scan.pdf"] for n in got) / len(got)
    assert mean <= reference + CLASS_SLACK, (cls, dpi, got)
