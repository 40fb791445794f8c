"""OCR engines: the fake, the factory, and rapidocr on real scanned pages (marked ``ocr``).

Character error rates measured on a 2-core machine with rapidocr 3.10
(PP-OCRv6 small, classifier off) at 150 dpi, on whitespace-normalised text:

* scanned/google-doc-document-scan.pdf page 1: 0.011 (bound 0.03)
* synthetic/scanned_noisy.pdf page 2 (two columns): 0.000 in reading order
  (bound 0.02); rapidocr's own box order gives 0.74 on the same page.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

from consumer.engines import (
    FakeEngine,
    PageText,
    RapidOcrEngine,
    UprightEngine,
    available_cores,
    make_engine,
    page_text_from_blocks,
    read_upright,
)
from consumer.pdf import PdfDocument
from schemas.errors import ErrorCode, PermanentError, RetryableError
from schemas.messages import Block, Engine

GOOGLE_DOC_CER = 0.03
TWO_COLUMN_CER = 0.02


def cer(got: str, want: str) -> float:
    """Character error rate on whitespace-normalised text."""
    return float(Levenshtein.normalized_distance(" ".join(got.split()), " ".join(want.split())))


def expected(corpus: Path, name: str, page_no: int) -> str:
    pages: list[str] = json.loads((corpus / name).read_text())
    return pages[page_no - 1]


def render(corpus: Path, name: str, page_no: int, dpi: int = 150) -> np.ndarray:
    with PdfDocument(corpus / name) as doc:
        return doc.render(page_no, dpi=dpi, max_megapixels=50)


# --- pure: the fake, the factory, ordering -------------------------------------------


def test_fake_engine_describes_the_image_and_counts_calls() -> None:
    engine = FakeEngine()
    white = np.full((20, 10, 3), 255, dtype=np.uint8)
    result = engine.read(white)
    assert result.text == "image 10x20 mean 255.0"
    assert result.blocks[0].bbox == (0.0, 0.0, 1.0, 1.0)
    assert engine.calls == 1
    assert engine.name == Engine.RAPIDOCR


def test_fake_engine_fixed_text_and_errors_in_order() -> None:
    engine = FakeEngine(text="hello", confidence=0.5, errors=[RetryableError(ErrorCode.OCR_FAILED, "flaky")])
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(RetryableError):
        engine.read(image)
    assert engine.read(image) == PageText(
        text="hello", blocks=[Block(text="hello", bbox=(0, 0, 1, 1), confidence=0.5)], confidence=0.5
    )
    assert engine.calls == 2


@pytest.mark.parametrize("engine", [Engine.TEXT, Engine.AUTO])
def test_make_engine_refuses_what_is_not_an_ocr_engine(engine: Engine) -> None:
    with pytest.raises(ValueError):
        make_engine(engine)


def test_nemotron_is_unavailable_without_its_package_or_cuda(tmp_path: Path) -> None:
    # CPU machines never install torch or nemotron-ocr (the gpu extra).
    with pytest.raises(PermanentError) as info:
        make_engine(Engine.NEMOTRON, model_dir=tmp_path)
    assert info.value.code == ErrorCode.ENGINE_UNAVAILABLE
    assert "nemotron" in info.value.message


def test_page_text_orders_blocks_and_averages_confidence() -> None:
    # Two columns given in the interleaved order an engine reports them in.
    blocks = []
    for i in range(4):
        y = 0.1 + 0.03 * i
        blocks.append(Block(text=f"L{i}", bbox=(0.1, y, 0.45, y + 0.02), confidence=0.8))
        blocks.append(Block(text=f"R{i}", bbox=(0.55, y, 0.9, y + 0.02), confidence=1.0))
    page = page_text_from_blocks(blocks)
    assert page.text == "L0\nL1\nL2\nL3\nR0\nR1\nR2\nR3"
    assert [b.text for b in page.blocks] == ["L0", "L1", "L2", "L3", "R0", "R1", "R2", "R3"]
    assert page.confidence == pytest.approx(0.9)
    assert page_text_from_blocks([]) == PageText(text="", blocks=[], confidence=0.0)


# --- pages turned sideways or upside down -------------------------------------------------


class MarkerEngine:
    """A fake that reads well only upright: the page's marker (a black square) must be at the top left.

    Turned a quarter, its one line comes out as a tall box; upside down, as a wide one; either way
    with low confidence, as rapidocr does (0.65 to 0.75 on the corpus).
    """

    name = Engine.RAPIDOCR

    def __init__(self, sideways_confidence: float = 0.6) -> None:
        self.calls = 0
        self.sideways_confidence = sideways_confidence

    def read(self, image: np.ndarray) -> PageText:
        self.calls += 1
        h, w = image.shape[:2]
        marker = [bool(image[y, x, 0] == 0) for y, x in ((2, 2), (2, w - 3), (h - 3, w - 3), (h - 3, 2))]
        if marker[0]:
            block = Block(text="upright text", bbox=(0.0, 0.0, 0.5, 0.1), confidence=0.99)
        elif marker[2]:
            block = Block(text="txet nwod edispu", bbox=(0.5, 0.9, 1.0, 1.0), confidence=0.6)
        else:
            block = Block(text="sideways", bbox=(0.9, 0.0, 1.0, 0.5), confidence=self.sideways_confidence)
        return PageText(text=block.text, blocks=[block], confidence=block.confidence)


def marked_page() -> np.ndarray:
    image = np.full((200, 160, 3), 255, dtype=np.uint8)
    image[:8, :8] = 0
    return image


def test_upright_page_is_read_once() -> None:
    engine = MarkerEngine()
    result = read_upright(engine, marked_page())
    assert (result.text, result.rotation, engine.calls) == ("upright text", 0, 1)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_turned_page_is_read_upright_and_boxes_map_back(rotation: int) -> None:
    engine = MarkerEngine()
    # np.rot90 with a negative k turns clockwise: the page as a scanner turned it.
    turned = np.ascontiguousarray(np.rot90(marked_page(), -rotation // 90))
    result = read_upright(engine, turned)
    assert (result.text, result.rotation) == ("upright text", rotation)
    assert engine.calls == {90: 2, 180: 2, 270: 3}[rotation]
    # The box of the upright reading's top-left line, on the page as displayed.
    want = {90: (0.9, 0.0, 1.0, 0.5), 180: (0.5, 0.9, 1.0, 1.0), 270: (0.0, 0.5, 0.1, 1.0)}[rotation]
    assert result.blocks[0].bbox == pytest.approx(want)


def test_sideways_page_read_confidently_is_still_turned() -> None:
    # rapidocr turns tall line crops itself and reads them well one way round, but the lines
    # come out as tall boxes in no reading order: the page is read again, turned.
    engine = MarkerEngine(sideways_confidence=0.99)
    result = read_upright(engine, np.ascontiguousarray(np.rot90(marked_page(), -1)))
    assert (result.text, result.rotation, engine.calls) == ("upright text", 90, 2)


def test_upright_engine_wraps_and_keeps_the_name() -> None:
    engine = UprightEngine(FakeEngine(text="hello", confidence=0.99))
    assert engine.name == Engine.RAPIDOCR
    assert engine.read(marked_page()).text == "hello"


def test_a_blank_page_is_not_turned() -> None:
    engine = FakeEngine(text="")
    assert read_upright(engine, marked_page()).rotation == 0
    assert engine.calls == 1


# --- rapidocr on real pages ---------------------------------------------------------------


@pytest.fixture(scope="module")
def rapidocr() -> RapidOcrEngine:
    return RapidOcrEngine()


@pytest.mark.ocr
def test_rapidocr_uses_the_cores_it_may_run_on(rapidocr: RapidOcrEngine) -> None:
    assert 1 <= rapidocr.threads <= available_cores()
    assert rapidocr.name == Engine.RAPIDOCR


@pytest.mark.ocr
def test_rapidocr_reads_a_scanned_page(rapidocr: RapidOcrEngine, corpus: Path) -> None:
    image = render(corpus, "scanned/google-doc-document-scan.pdf", 1)
    result = rapidocr.read(image)
    want = expected(corpus, "scanned/google-doc-document-scan.pdf.expected.json", 1)
    assert cer(result.text, want) < GOOGLE_DOC_CER
    assert result.text.startswith("Example document\n")
    assert 0.9 < result.confidence <= 1.0
    assert all(0.0 <= v <= 1.0 for b in result.blocks for v in b.bbox)


@pytest.mark.ocr
def test_rapidocr_reads_two_columns_in_order(rapidocr: RapidOcrEngine, corpus: Path) -> None:
    layouts: list[str] = json.loads((corpus / "synthetic" / "layouts.json").read_text())
    assert layouts[1] == "two_col"
    image = render(corpus, "synthetic/scanned_noisy.pdf", 2)
    result = rapidocr.read(image)
    want = expected(corpus, "synthetic/synthetic.expected.json", 2)
    assert cer(result.text, want) < TWO_COLUMN_CER
    # The engine's own order would interleave the columns: check the text is not that.
    engine_order = " ".join(b.text for b in sorted(result.blocks, key=lambda b: (round(b.bbox[1], 2), b.bbox[0])))
    assert cer(engine_order, want) > 0.3


@pytest.mark.ocr
def test_rapidocr_blank_page_reads_nothing(rapidocr: RapidOcrEngine) -> None:
    result = rapidocr.read(np.full((600, 400, 3), 255, dtype=np.uint8))
    assert result == PageText(text="", blocks=[], confidence=0.0)


@pytest.mark.ocr
def test_rapidocr_reads_a_page_scanned_upside_down(corpus: Path) -> None:
    # One page, two readings (upright reading is poor, the turned one is taken): about 10 s.
    engine = make_engine(Engine.RAPIDOCR)
    image = np.ascontiguousarray(np.rot90(render(corpus, "scanned/google-doc-document-scan.pdf", 1), 2))
    result = engine.read(image)
    assert isinstance(result, PageText)
    assert result.rotation == 180
    assert cer(result.text, expected(corpus, "scanned/google-doc-document-scan.pdf.expected.json", 1)) <= GOOGLE_DOC_CER


def _margin_page(run: str) -> np.ndarray:
    """A page with a paragraph, and in its left margin a line that runs up (or down) the page."""
    from PIL import Image, ImageDraw, ImageFont

    page = Image.new("RGB", (1000, 1300), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=26)
    for i, words in enumerate(("The body of the page reads across", "in lines, one after another,", "as usual.")):
        draw.text((160, 200 + 40 * i), words, fill="black", font=font)
    stamp = Image.new("RGB", (900, 44), "white")
    ImageDraw.Draw(stamp).text((8, 6), "arXiv:2401.01234v2 [cs.CL]      12 Jan 2024", fill="black", font=font)
    page.paste(stamp.rotate(90 if run == "upward" else -90, expand=True), (40, 250))
    return np.asarray(page)


@pytest.mark.ocr
@pytest.mark.parametrize("run", ["upward", "downward"])
def test_rapidocr_reads_a_margin_line_whichever_way_it_runs(rapidocr: RapidOcrEngine, run: str) -> None:
    result = rapidocr.read(_margin_page(run))
    assert "The body of the page reads across" in result.text
    # Cut by detection where its words stand apart, read the right way up and joined in its own order.
    stamp = next(b.text for b in result.blocks if "arXiv" in b.text)
    assert Levenshtein.normalized_distance(stamp, "arXiv:2401.01234v2 [cs.CL] 12 Jan 2024") < 0.1


def _list_page() -> np.ndarray:
    """A bulleted list whose marks are drawn shapes: a filled square, a box, a large disc, and a line
    without one."""
    from PIL import Image, ImageDraw, ImageFont

    page = Image.new("RGB", (1000, 700), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=26)
    items = ("Check the brake pads", "Rotate the tires now", "Inspect all fluid levels", "Replace the cabin filter")
    for i, (words, mark) in enumerate(zip(items, ("square", "box", "disc", None), strict=True)):
        y = 150 + 60 * i
        if mark == "square":
            draw.rectangle((160, y + 8, 178, y + 26), fill="black")
        elif mark == "box":
            draw.rectangle((160, y + 8, 178, y + 26), outline="black", width=2)
        elif mark == "disc":
            draw.ellipse((160, y + 8, 178, y + 26), fill="black")
        draw.text((196, y), words, fill="black", font=font)
    return np.asarray(page)


@pytest.mark.ocr
def test_rapidocr_keeps_the_marks_of_a_list(rapidocr: RapidOcrEngine) -> None:
    lines = [line for line in rapidocr.read(_list_page()).text.splitlines() if line]
    marks = [line.split(" ", 1)[0] for line in lines]
    # The model reads the box itself, as one box sign or the other; the rest it drops.
    assert marks[0] == "■" and marks[1] in ("☐", "□") and marks[2] == "●"
    assert lines[:2] == ["■ Check the brake pads", f"{marks[1]} Rotate the tires now"]
    assert lines[3] == "Replace the cabin filter"
    assert len(lines) == 4
