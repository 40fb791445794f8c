"""rapidocr's backends: onnxruntime, or OpenVINO where the package is installed (one real page, marked ``ocr``)."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

from consumer import engines
from consumer.pdf import PdfDocument
from schemas.errors import ErrorCode, PermanentError


def test_an_explicit_backend_is_kept_and_an_unknown_one_refused() -> None:
    assert engines._backend("onnxruntime") == "onnxruntime"
    assert engines._backend("openvino") == "openvino"
    with pytest.raises(ValueError):
        engines._backend("tensorrt")


@pytest.mark.parametrize(("installed", "want"), [(True, "openvino"), (False, "onnxruntime")])
def test_auto_takes_openvino_only_where_it_is_installed(
    monkeypatch: pytest.MonkeyPatch, installed: bool, want: str
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        if name == "openvino":
            return object() if installed else None
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert engines._backend("auto") == want


def test_auto_keeps_onnxruntime_under_a_small_address_space(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: object())
    monkeypatch.setattr(engines.resource, "getrlimit", lambda which: (3 * 1024**3, 3 * 1024**3))
    assert engines._backend("auto") == "onnxruntime"
    monkeypatch.setattr(engines.resource, "getrlimit", lambda which: (8 * 1024**3, 8 * 1024**3))
    assert engines._backend("auto") == "openvino"


def test_openvino_asked_for_but_missing_is_engine_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def import_module(name: str, *args: Any) -> Any:
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", import_module)
    with pytest.raises(PermanentError) as info:
        engines._OpenVinoModel("det.onnx", 1, "bf16")
    assert info.value.code == ErrorCode.ENGINE_UNAVAILABLE
    assert "openvino" in info.value.message


@pytest.mark.ocr
@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed here")
def test_openvino_reads_a_scanned_page_as_onnxruntime_does(corpus: Path) -> None:
    with PdfDocument(corpus / "scanned/google-doc-document-scan.pdf") as doc:
        image = doc.render(1, dpi=150, max_megapixels=50)
    want = json.loads((corpus / "scanned/google-doc-document-scan.pdf.expected.json").read_text())[0]
    engine = engines.RapidOcrEngine(threads=1, backend="openvino")
    assert engine.backend == "openvino"
    page = engine.read(image)
    # The bound onnxruntime meets on this page (tests/unit/test_engines.py).
    assert Levenshtein.normalized_distance(" ".join(page.text.split()), " ".join(want.split())) < 0.03
    assert 0.9 < page.confidence <= 1.0


def test_a_latin_reading_keeps_the_blank_and_latin_script_and_drops_cjk() -> None:
    characters = ["blank", "a", "中", "é", "Ω", "→", "ﬁ", "。", "か", "한", "，", " "]
    kept = engines.latin_classes(characters)
    assert [characters[i] for i in kept] == ["blank", "a", "é", "Ω", "→", "ﬁ", " "]


def test_an_unknown_alphabet_is_refused() -> None:
    with pytest.raises(ValueError, match="alphabet"):
        engines.RapidOcrEngine(threads=1, alphabet="klingon")


@pytest.mark.ocr
@pytest.mark.parametrize(
    "backend",
    [
        "onnxruntime",
        pytest.param(
            "openvino",
            marks=pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed"),
        ),
    ],
)
def test_a_latin_reading_reads_an_english_page_as_the_whole_model_does(corpus: Path, backend: str) -> None:
    with PdfDocument(corpus / "scanned/google-doc-document-scan.pdf") as doc:
        image = doc.render(1, dpi=150, max_megapixels=50)
    whole = engines.RapidOcrEngine(threads=1, backend=backend, alphabet="all")
    latin = engines.RapidOcrEngine(threads=1, backend=backend, alphabet="latin")
    characters = latin._ocr.text_rec.postprocess_op.character  # type: ignore[attr-defined]
    assert len(characters) < len(whole._ocr.text_rec.postprocess_op.character) / 5  # type: ignore[attr-defined]
    read_whole, read_latin = whole.read(image), latin.read(image)
    assert read_latin.text == read_whole.text
    assert len(read_latin.text) > 500
    # Scores over fewer classes: a line's confidence can only rise.
    assert read_latin.confidence >= read_whole.confidence - 1e-6


def test_a_box_is_tall_as_rapidocr_turns_it() -> None:
    def box(width: float, height: float) -> np.ndarray:
        return np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)

    assert engines.is_tall(box(20, 60))
    assert engines.is_tall(box(20, 30))
    assert not engines.is_tall(box(20, 29))
    assert not engines.is_tall(box(300, 30))


def _piece(x0: float, y0: float, x1: float, y1: float, text: str, run: str = "") -> engines.Piece:
    return engines.Piece(x0, y0, x1, y1, text, 0.9, run)


def test_the_pieces_of_a_line_running_up_the_page_join_bottom_first() -> None:
    body = _piece(100, 100, 900, 130, "a line of the body")
    pieces = [
        _piece(20, 100, 50, 160, "2016", "upward"),
        _piece(21, 175, 49, 230, "12 Jan", "upward"),
        _piece(20, 245, 52, 700, "arXiv:1601.03642v1 [cs.CV]", "upward"),
        body,
    ]
    joined = engines.join_vertical_runs(pieces)
    assert body in joined
    stamp = next(p for p in joined if p.run)
    assert stamp.text == "arXiv:1601.03642v1 [cs.CV] 12 Jan 2016"
    assert (stamp.x0, stamp.y0, stamp.x1, stamp.y1) == (20, 100, 52, 700)
    assert len(joined) == 2


def test_a_line_running_down_the_page_joins_top_first() -> None:
    pieces = [_piece(20, 300, 50, 500, "Chapter 3", "downward"), _piece(20, 100, 50, 280, "Maintenance", "downward")]
    assert [p.text for p in engines.join_vertical_runs(pieces)] == ["Maintenance Chapter 3"]


def test_vertical_pieces_apart_or_running_other_ways_or_too_short_stay_apart() -> None:
    pieces = [
        _piece(20, 100, 50, 300, "left margin", "upward"),
        _piece(950, 100, 980, 300, "right margin", "upward"),  # another column
        _piece(20, 500, 50, 700, "far below", "upward"),  # a gap of many widths
        _piece(20, 310, 50, 480, "the other way", "downward"),
        # A column of digits in a table: tall boxes of one character each.
        _piece(600, 100, 612, 120, "1", "downward"),
        _piece(600, 130, 612, 150, "1", "downward"),
    ]
    assert sorted(p.text for p in engines.join_vertical_runs(pieces)) == sorted(p.text for p in pieces)
