"""The pdfium adapter: bad input gets its error code, text layers match the corpus, rendering is bounded."""

from __future__ import annotations

import ctypes
import json
import math
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pypdfium2
import pytest

from consumer import pdf
from consumer.pdf import (
    PageContent,
    PageSource,
    PdfDocument,
    _char_counts,
    _is_bad_char,
    has_real_text,
    inspect_pdf,
    judge_page,
    layer_text,
)
from schemas.errors import ErrorCode, PermanentError

MakePdf = Callable[..., bytes]
TWO_LINES = [[(72.0, 72.0, "Hello world from pagewire"), (72.0, 100.0, "A second line of text")]]


def _manifest(corpus: Path) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = json.loads((corpus / "manifest.json").read_text())
    return entries


# --- bad input --------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", ErrorCode.EMPTY_FILE),
        (b"PK\x03\x04 this is a zip file, not a PDF" * 10, ErrorCode.NOT_A_PDF),
        (b"%PDF-1.7\n" + b"\x00garbage" * 100, ErrorCode.TRUNCATED_PDF),
    ],
    ids=["empty", "not-a-pdf", "header-then-garbage"],
)
def test_bad_bytes_get_their_code(data: bytes, code: ErrorCode) -> None:
    with pytest.raises(PermanentError) as info:
        inspect_pdf(data, max_pages=10)
    assert info.value.code == code
    with pytest.raises(PermanentError) as info:
        PdfDocument(data)
    assert info.value.code == code


def test_truncated_real_file_is_truncated_pdf(corpus: Path) -> None:
    data = (corpus / "real" / "pdflatex-4-pages.pdf").read_bytes()
    with pytest.raises(PermanentError) as info:
        inspect_pdf(data[: len(data) // 2], max_pages=10)
    assert info.value.code == ErrorCode.TRUNCATED_PDF


def test_encrypted_pdf_is_encrypted_pdf(encrypted_pdf: bytes) -> None:
    with pytest.raises(PermanentError) as info:
        inspect_pdf(encrypted_pdf, max_pages=10)
    assert info.value.code == ErrorCode.ENCRYPTED_PDF


def test_page_that_fails_to_load_is_truncated_pdf(broken_page_pdf: bytes) -> None:
    with pytest.raises(PermanentError) as info:
        inspect_pdf(broken_page_pdf, max_pages=10)
    assert info.value.code == ErrorCode.TRUNCATED_PDF
    with PdfDocument(broken_page_pdf) as doc:
        assert doc.text_layer(1).text == ""
        with pytest.raises(PermanentError) as info:
            doc.text_layer(2)
    assert info.value.code == ErrorCode.TRUNCATED_PDF


def test_zero_pages_is_no_pages(zero_page_pdf: bytes) -> None:
    with pytest.raises(PermanentError) as info:
        inspect_pdf(zero_page_pdf, max_pages=10)
    assert info.value.code == ErrorCode.NO_PAGES


def test_no_pages_is_reported_even_after_another_failure(encrypted_pdf: bytes, zero_page_pdf: bytes) -> None:
    # pdfium keeps its last error in a global; a stale "password" must not leak into the next file.
    with pytest.raises(PermanentError):
        inspect_pdf(encrypted_pdf, max_pages=10)
    with pytest.raises(PermanentError) as info:
        PdfDocument(zero_page_pdf)
    assert info.value.code == ErrorCode.NO_PAGES


def test_too_many_pages(make_pdf: MakePdf) -> None:
    data = make_pdf([[(72.0, 72.0, f"Page number {n} of three")] for n in range(3)])
    assert inspect_pdf(data, max_pages=3).page_count == 3
    with pytest.raises(PermanentError) as info:
        inspect_pdf(data, max_pages=2)
    assert info.value.code == ErrorCode.TOO_MANY_PAGES


def test_empty_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "empty.pdf"
    path.write_bytes(b"")
    with pytest.raises(PermanentError) as info:
        PdfDocument(path)
    assert info.value.code == ErrorCode.EMPTY_FILE


# --- inspect_pdf: which pages have real text ---------------------------------


def test_text_pages_follow_the_corpus_classes(corpus: Path) -> None:
    for entry in _manifest(corpus):
        cls, name = str(entry["class"]), str(entry["file"])
        info = inspect_pdf((corpus / name).read_bytes(), max_pages=5000)
        assert info.page_count == entry["pages"], name
        if cls.startswith("born-digital"):
            assert all(info.text_pages), name
        elif cls in ("scanned", "image-no-text"):
            assert not any(info.text_pages), name


def test_text_pages_mixed_document(make_pdf: MakePdf) -> None:
    data = make_pdf([TWO_LINES[0], [], [(300.0, 400.0, "7")]])
    assert inspect_pdf(data, max_pages=10).text_pages == (True, False, False)


def test_only_the_pages_asked_for_are_judged(make_pdf: MakePdf) -> None:
    data = make_pdf([TWO_LINES[0], [], [(300.0, 400.0, "7")]])
    info = inspect_pdf(data, max_pages=10, first_page=2, last_page=9)
    assert (info.page_count, info.first_page, info.last_page, info.text_pages) == (3, 2, 3, (False, False))
    with pytest.raises(PermanentError) as caught:
        inspect_pdf(data, max_pages=10, first_page=4)
    assert caught.value.code == ErrorCode.INVALID_OPTIONS


# --- text layer ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["real/pdflatex-4-pages.pdf", "real/google-doc-document.pdf", "real/issue7454.pdf", "real/habibi.pdf"]
)
def test_text_layer_equals_expected_text(corpus: Path, name: str) -> None:
    expected: list[str] = json.loads((corpus / f"{name}.expected.json").read_text())
    with PdfDocument(corpus / name) as doc:
        assert doc.page_count == len(expected)
        for page_no, want in enumerate(expected, start=1):
            layer = doc.text_layer(page_no)
            assert layer.text == want, f"{name} page {page_no}"
            assert layer.chars >= len(want.replace("\n", ""))


def test_a_word_hyphenated_at_a_line_end_reads_as_the_page_shows_it(make_pdf: MakePdf) -> None:
    # Given a word split across two lines by a hyphen, which pdfium gives as U+FFFE and no line end
    page = [(72.0, 72.0, "A word set across two lines, hyphen-"), (72.0, 94.0, "ated where the first one ends.")]
    with PdfDocument(make_pdf([page])) as doc:
        # When its text layer is read
        layer = doc.text_layer(1)
    # Then the text has the hyphen and the line end a reader sees, in the page text and in the blocks
    assert layer.text == "A word set across two lines, hyphen-\nated where the first one ends."
    assert [b.text for b in layer.blocks] == ["A word set across two lines, hyphen-", "ated where the first one ends."]


def test_hyphenated_words_of_a_corpus_page_read_as_drawn(corpus: Path) -> None:
    with PdfDocument(corpus / "real" / "minimal-document.pdf") as doc:
        layer = doc.text_layer(1)
    assert "no sea taki-\nmata sanctus" in layer.text
    assert not any(c in "\ufffe\uffff" for c in layer.text + "".join(b.text for b in layer.blocks))


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("one\r\ntwo\rthree", "one\ntwo\nthree"),
        ("no sea taki\ufffemata sanctus", "no sea taki-\nmata sanctus"),
        # Runs put in reading order may end a line after the mark already: one line end, not two.
        ("taki\ufffe\r\nmata", "taki-\nmata"),
        ("the last run ends taki\ufffe", "the last run ends taki-"),
        ("a non-character \uffff", "a non-character \ufffd"),
    ],
)
def test_layer_text(text: str, want: str) -> None:
    assert layer_text(text) == want


def test_text_layer_blocks_are_lines_in_page_fractions(make_pdf: MakePdf) -> None:
    with PdfDocument(make_pdf(TWO_LINES, size=(600.0, 800.0))) as doc:
        layer = doc.text_layer(1)
    assert layer.text == "Hello world from pagewire\nA second line of text"
    assert [b.text for b in layer.blocks] == ["Hello world from pagewire", "A second line of text"]
    first = layer.blocks[0].bbox
    # The baseline starts at 72 pt from the left and 72 pt from the top; the glyphs sit just above it.
    assert first[0] == pytest.approx(72 / 600, abs=0.01)
    assert first[1] < 72 / 800 < first[3] + 0.01
    assert all(0.0 <= v <= 1.0 for b in layer.blocks for v in b.bbox)
    assert layer.blocks[0].bbox[1] < layer.blocks[1].bbox[1]


@pytest.mark.parametrize("room", [1, 5, 26, 200])
def test_text_in_a_box_reads_as_pypdfium2_reads_it(make_pdf: MakePdf, room: int) -> None:
    # A buffer of any size, too small for the text included, gives the text pypdfium2 gives.
    doc = pypdfium2.PdfDocument(make_pdf(TWO_LINES, size=(600.0, 800.0)))
    page = doc[0]
    textpage = page.get_textpage()
    try:
        for box in [(0.0, 0.0, 600.0, 800.0), (60.0, 720.0, 400.0, 745.0), (300.0, 0.0, 310.0, 10.0)]:
            buffer = (ctypes.c_ushort * room)()
            assert pdf._text_in(textpage.raw, box, buffer) == textpage.get_text_bounded(*box)
    finally:
        textpage.close()
        page.close()
        doc.close()


def test_text_layer_boxes_follow_page_rotation(make_pdf: MakePdf) -> None:
    # /Rotate 90 turns the page clockwise: a line at the top left ends up on the right, running down.
    with PdfDocument(make_pdf(TWO_LINES, size=(600.0, 800.0), rotation=90)) as doc:
        assert doc.page_size(1) == pytest.approx((800.0, 600.0))
        x0, y0, x1, y1 = doc.text_layer(1).blocks[0].bbox
    assert x0 > 0.85 and x1 - x0 < 0.05
    assert y1 - y0 > 0.15


def test_text_layer_of_a_turned_page_keeps_its_reading_order(make_pdf: MakePdf) -> None:
    # pdfium orders text as displayed: unhelped, /Rotate 90 gives the lines bottom to top.
    lines = [(72.0, 72.0 + 20 * i, f"Line number {i} of the page") for i in range(6)]
    want = "\n".join(text for _, _, text in lines)
    for rotation in (90, 180, 270):
        with PdfDocument(make_pdf([lines], rotation=rotation)) as doc:
            assert doc.text_layer(1).text == want, rotation
            assert doc.page_size(1)[0] == (792.0 if rotation in (90, 270) else 612.0)


def test_text_layer_over_the_character_limit_is_too_complex(monkeypatch: pytest.MonkeyPatch, make_pdf: MakePdf) -> None:
    # Given a page of 46 characters and a limit of 40
    monkeypatch.setattr(pdf, "MAX_PAGE_CHARS", 40)
    with PdfDocument(make_pdf(TWO_LINES)) as doc:
        # When its text layer is read, then it is refused before its text and boxes are taken
        with pytest.raises(PermanentError) as info:
            doc.text_layer(1)
        assert info.value.code == ErrorCode.PDF_TOO_COMPLEX
        assert "more than 40" in str(info.value)
        # And the same page under the limit reads as usual
        monkeypatch.setattr(pdf, "MAX_PAGE_CHARS", 1_000)
        assert "Hello world" in doc.text_layer(1).text


def test_text_layer_of_an_image_page_is_empty(corpus: Path) -> None:
    with PdfDocument(corpus / "real" / "cmyk-image.pdf") as doc:
        layer = doc.text_layer(1)
    assert (layer.text, layer.blocks, layer.chars) == ("", [], 0)


# --- rendering ------------------------------------------------------------------


def test_render_size_at_dpi(make_pdf: MakePdf) -> None:
    with PdfDocument(make_pdf(TWO_LINES, size=(612.0, 792.0))) as doc:
        image = doc.render(1, dpi=150, max_megapixels=50)
    # 612 x 792 pt at 150/72 px per pt, rounded up like pdfium does (1650.0000000000002 -> 1651).
    assert image.shape == (1651, 1275, 3)
    assert image.dtype == np.uint8
    # White page, black text: the text rows are darker than the margin.
    assert image[0:50].min() == 255
    assert image.min() < 100


def test_render_page_too_large_is_checked_before_rendering(monkeypatch: pytest.MonkeyPatch, make_pdf: MakePdf) -> None:
    with PdfDocument(make_pdf(TWO_LINES, size=(612.0, 792.0))) as doc:
        rendered: list[int] = []
        monkeypatch.setattr(pypdfium2.PdfPage, "render", lambda *a, **k: rendered.append(1))
        with pytest.raises(PermanentError) as info:
            doc.render(1, dpi=150, max_megapixels=1.0)  # 1275 x 1650 = 2.1 MP
    assert info.value.code == ErrorCode.PAGE_TOO_LARGE
    assert rendered == []


def test_render_scanned_page_is_rgb(corpus: Path) -> None:
    with PdfDocument(corpus / "scanned" / "google-doc-document-scan.pdf") as doc:
        width, height = doc.page_size(1)
        image = doc.render(1, dpi=72, max_megapixels=50)
    assert image.shape == (math.ceil(height), math.ceil(width), 3)


def test_closed_document_and_bad_page_numbers(make_pdf: MakePdf) -> None:
    doc = PdfDocument(make_pdf(TWO_LINES))
    with pytest.raises(ValueError):
        doc.text_layer(2)
    doc.close()
    doc.close()
    with pytest.raises(ValueError):
        doc.page_size(1)


def test_documents_can_be_used_from_many_threads(corpus: Path) -> None:
    # pdfium crashes or garbles text when called concurrently; the lock makes this safe.
    path = corpus / "real" / "pdflatex-4-pages.pdf"
    expected: list[str] = json.loads(path.with_name(path.name + ".expected.json").read_text())
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                with PdfDocument(path) as doc:
                    for page_no in range(1, 5):
                        assert doc.text_layer(page_no).text == expected[page_no - 1]
                        doc.render(page_no, dpi=36, max_megapixels=50)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# --- has_real_text ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "real"),
    [
        ("", False),
        ("   \r\n\t ", False),
        ("x", False),  # one stray glyph
        ("12", False),  # a lone page number
        ("\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f" * 20 + "abcdefghij", False),  # no usable character map
        ("\ue001\ue002\ue003" * 30 + " ab cd ef gh ij", False),  # private-use glyph codes
        ("\ufffd" * 50 + " Hello world", False),
        ("- . , ; : ! ? * / " * 20 + "abcdefghij", False),  # punctuation only, nearly
        ("Hello world, this is a page.", True),
        ("Inhaltsverzeichnis 1 Topologische Grundbegriffe . . . . . . . . . . 2", True),
        ("يبيبَح habibi يبيبَح", True),
        ("Matrix \uf8eb a b \uf8f6 " * 5 + "with some real words around it", True),
    ],
)
def test_has_real_text(text: str, real: bool) -> None:
    assert has_real_text(text) is real


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Straße, naïve café: 12 €",
        "\u00a0\u2003 words\u2028between\u3000odd spaces\x1c\x85",
        "lone \ud800 surrogate \udfff",
        "\ufffd\ufffe\uffff \U0010fffd \x00",
        "maths \U0001d400\U0001d401 and emoji \U0001f600 beside ascii 42",
        "".join(map(chr, range(0, 0x3000, 7))),
    ],
)
def test_character_counts_match_asking_each_character(text: str) -> None:
    # The table lookup against the definition: not whitespace, str.isalnum, bad per _is_bad_char.
    kept = [c for c in text if not c.isspace()]
    expected = (len(kept), sum(c.isalnum() for c in kept), sum(_is_bad_char(c) for c in kept))
    assert _char_counts(text) == expected


# --- judge_page: text layer, OCR or both ----------------------------------------------

PARAGRAPH = [(72.0, 100.0 + 16 * i, f"This is line {i} of a paragraph of real text.") for i in range(5)]


@pytest.mark.parametrize(
    ("content", "source"),
    [
        (PageContent(text_objects=40, visible_text_objects=40), PageSource.TEXT),
        (
            PageContent(text_objects=40, visible_text_objects=40, image_share=0.12, bare_image_share=0.12),
            PageSource.TEXT,
        ),
        (PageContent(text_objects=40, visible_text_objects=40, image_share=1.0, bare_image_share=0.0), PageSource.TEXT),
        (PageContent(text_objects=40, visible_text_objects=0, image_share=0.99, bare_image_share=0.99), PageSource.OCR),
        (PageContent(text_objects=40, visible_text_objects=1, image_share=1.0), PageSource.OCR),
        (
            PageContent(text_objects=40, visible_text_objects=40, image_share=0.4, bare_image_share=0.4),
            PageSource.HYBRID,
        ),
    ],
    ids=["born-digital", "small-figure", "text-on-background", "text-under-scan", "invisible-layer", "pasted-scan"],
)
def test_judge_page(content: PageContent, source: PageSource) -> None:
    assert judge_page("Real words on a real page of text.", content) == source


def test_judge_page_garbage_is_ocr_whatever_the_objects() -> None:
    assert judge_page("\x01\x02\x03" * 20, PageContent(text_objects=5, visible_text_objects=5)) == PageSource.OCR


def test_invisible_ocr_layer_on_a_scan_goes_to_ocr(image_text_pdf: MakePdf) -> None:
    data = image_text_pdf(PARAGRAPH, text_mode=3)
    with PdfDocument(data) as doc:
        layer = doc.text_layer(1)
    assert layer.content == PageContent(text_objects=5, visible_text_objects=0, image_share=1.0, bare_image_share=1.0)
    assert layer.source == PageSource.OCR
    assert inspect_pdf(data, max_pages=5).sources == (PageSource.OCR,)


def test_text_painted_under_a_scan_goes_to_ocr(image_text_pdf: MakePdf) -> None:
    with PdfDocument(image_text_pdf(PARAGRAPH, text_first=True)) as doc:
        assert doc.text_layer(1).source == PageSource.OCR


def test_text_over_a_background_image_stays_text(image_text_pdf: MakePdf) -> None:
    with PdfDocument(image_text_pdf(PARAGRAPH)) as doc:
        assert doc.text_layer(1).source == PageSource.TEXT


def test_pasted_scan_beside_real_text_is_hybrid(image_text_pdf: MakePdf) -> None:
    data = image_text_pdf(PARAGRAPH, image_box=(0.1, 0.4, 0.9, 0.9))
    with PdfDocument(data) as doc:
        layer = doc.text_layer(1)
    assert layer.source == PageSource.HYBRID
    assert layer.content is not None and layer.content.bare_image_share == pytest.approx(0.4, abs=0.01)
    info = inspect_pdf(data, max_pages=5)
    assert (info.sources, info.text_pages) == ((PageSource.HYBRID,), (False,))


def test_sources_follow_the_corpus_classes(corpus: Path) -> None:
    for entry in _manifest(corpus):
        cls, name = str(entry["class"]), str(entry["file"])
        sources = set(inspect_pdf((corpus / name).read_bytes(), max_pages=5000).sources)
        if cls.startswith("born-digital"):
            assert sources == {PageSource.TEXT}, name
        else:  # scanned, image-no-text, scanned-with-poor-text-layer (an invisible or hidden OCR layer)
            assert sources == {PageSource.OCR}, name


def test_text_layer_without_content_is_judged_on_its_text() -> None:
    from consumer.pdf import TextLayer

    assert TextLayer(text="Hello world, a page of text.", boxes=[], chars=28).source == PageSource.TEXT
    assert TextLayer(text="", boxes=[], chars=0).source == PageSource.OCR


def _column_lines(prefix: str) -> list[str]:
    return [f"{prefix}{i:02d} some words of a line in its column" for i in range(24)]


def test_text_layer_written_across_two_columns_reads_column_by_column(make_pdf: MakePdf) -> None:
    # Given a page whose text was written straight across two columns, line by line
    left, right = _column_lines("L"), _column_lines("R")
    runs = [run for i in range(24) for run in ((72.0, 90.0 + 13 * i, left[i]), (320.0, 90.0 + 13 * i, right[i]))]
    with PdfDocument(make_pdf([runs], font_size=9.0)) as doc:
        layer = doc.text_layer(1)
    # Then the left column is read before the right, and no character is lost or added
    assert [line.strip() for line in layer.text.split("\n") if line.strip()] == left + right
    assert sorted(layer.text.split()) == sorted(" ".join(left + right).split())
    assert [b[0] for b in layer.boxes] == left + right
