"""``pagewire eval``: scoring, the pages it reads, the goals; a whole run on born-digital pages (no OCR)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from consumer.pdf import PdfDocument
from tools.evaluate import (
    Reading,
    Report,
    Score,
    add_parser,
    check_goals,
    corpus_samples,
    evaluate,
    layout_reference,
    low_contrast_pdf,
    rotated_pdf,
    run,
    score_page,
)


def test_score_page_exact_and_reordered() -> None:
    exact = score_page("one two\nthree", "one  two three")
    assert (exact.cer, exact.order_free_cer, exact.word_recall) == (0.0, 0.0, 1.0)
    swapped = score_page("three one two", "one two three")
    assert swapped.cer > 0.3
    assert swapped.order_free_cer == 0.0
    assert swapped.word_recall == 1.0


def test_score_page_reads_the_expected_text_as_a_text_field_carries_it() -> None:
    # A symbol font's glyph a layer maps to a control character: pagewire gives U+FFFD, or a space.
    assert score_page("proof. \ufffd Lemma 2 x y", "proof. \x04 Lemma 2\x0cx\x1cy").edits == 0
    assert score_page("proof. Lemma 2", "proof. \x04 Lemma 2").edits == 2
    # pdfium's mark for a hyphen at a line end: the hyphen and the line end, as the page text gives it.
    assert score_page("no sea taki-\nmata", "no sea taki\ufffemata").edits == 0


def test_score_page_counts_words_as_a_multiset() -> None:
    score = score_page("the cat", "the the cat sat")
    assert (score.words, score.words_found) == (4, 2)
    assert score.word_recall == 0.5


def test_scores_sum_before_dividing() -> None:
    total = Score()
    total.add(score_page("", "a" * 90))  # 90 edits over 90 characters
    total.add(score_page("b" * 10, "b" * 10))  # none over 10
    assert total.cer == pytest.approx(0.9)
    assert total.pages == 2


def test_samples_cover_the_classes(corpus: Path) -> None:
    samples = corpus_samples(corpus)
    classes = {s.cls for s in samples}
    assert {
        "born-digital",
        "born-digital-form",
        "born-digital-table",
        "scanned",
        "scanned-one-col",
        "scanned-two-col",
        "scanned-table",
        "scanned-mixed",
        "scanned-mono",
        "scanned-with-poor-text-layer",
        "image-no-text",
        "rotated",
        "born-digital-rotated",
        "low-contrast",
    } <= classes
    assert sum(s.cls == "scanned-two-col" for s in samples) == 4
    assert all(s.expected is None for s in samples if s.cls == "scanned-with-poor-text-layer")


def test_rotated_pdf_turns_the_page(corpus: Path) -> None:
    with PdfDocument(rotated_pdf(corpus / "synthetic/born_digital.pdf", 1, 90)) as doc:
        width, height = doc.page_size(1)
        assert width > height  # a portrait page turned a quarter
        assert doc.text_layer(1).text.startswith("Section 1. Terms and conditions")


def test_low_contrast_pdf_is_a_light_image_only_page(corpus: Path) -> None:
    with PdfDocument(low_contrast_pdf(corpus / "real/minimal-document.pdf", 1)) as doc:
        assert doc.text_layer(1).text == ""
        image = doc.render(1, dpi=50, max_megapixels=10)
    assert image.min() >= 170  # the darkest ink is a light grey


def _reading(cls: str, name: str, engine: str, got: str, want: str) -> Reading:
    return Reading(cls, name, engine, engine, 0.0, score_page(got, want))


def test_goals_met_and_missed() -> None:
    report = Report(engines=["text", "rapidocr", "auto"])
    report.readings = [
        _reading("born-digital", "a:1", "text", "exact words", "exact words"),
        _reading("born-digital", "a:1", "rapidocr", "exact w0rds", "exact words"),
        _reading("born-digital", "a:1", "auto", "exact words", "exact words"),
        _reading("scanned-two-col", "b:1", "text", "", "left right"),
        _reading("scanned-two-col", "b:1", "rapidocr", "left right", "left right"),
        _reading("scanned-two-col", "b:1", "auto", "left rigth", "left right"),
    ]
    checks = {(c.goal, c.cls, c.engine): c.met for c in check_goals(report)}
    assert checks[("born-digital exact", "born-digital", "auto")] is True
    assert checks[("scanned two-column <= 0.05", "scanned-two-col", "rapidocr")] is True
    assert checks[("scanned two-column <= 0.05", "scanned-two-col", "auto")] is False
    assert checks[("auto never worse than the best engine", "born-digital", "auto")] is True
    assert checks[("auto never worse than the best engine", "scanned-two-col", "auto")] is False


def test_evaluate_born_digital_pages_without_ocr(corpus: Path) -> None:
    samples = [s for s in corpus_samples(corpus, generated=False) if s.cls == "born-digital-table"]
    report = evaluate(samples, ["text", "auto"], max_ocr_pages=0)
    assert {(r.engine, r.source) for r in report.readings} == {("text", "text"), ("auto", "text")}
    assert all(r.score is not None and r.score.cer == 0.0 for r in report.readings)
    assert report.ocr_reads == 0
    assert report.decisions == {"born-digital-table": {"text": 1}}


def test_max_ocr_pages_leaves_ocr_pages_out(corpus: Path) -> None:
    samples = [s for s in corpus_samples(corpus, generated=False) if s.cls == "scanned"]
    report = evaluate(samples, ["text", "auto"], max_ocr_pages=0)
    assert report.skipped == {"scanned/auto": 4}
    assert [r.engine for r in report.readings] == ["text"] * 4


def test_command_prints_json(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "eval",
            "--corpus",
            str(corpus),
            "--engines",
            "text,auto",
            "--classes",
            "born-digital-form",
            "--json",
            "--quiet",
        ]
    )
    assert args.func is run
    assert run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert {(row["class"], row["engine"], row["cer"]) for row in out["classes"]} == {
        ("born-digital-form", "text", 0.0),
        ("born-digital-form", "auto", 0.0),
    }
    assert all(goal["met"] for goal in out["goals"])


def test_command_refuses_unknown_engines_and_classes(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    assert run(parser.parse_args(["eval", "--corpus", str(corpus), "--engines", "no-such-engine"])) == 2
    assert run(parser.parse_args(["eval", "--corpus", str(corpus), "--classes", "nope", "--quiet"])) == 2
    # The refusal lists every class --classes takes, the ones made from corpus pages on the spot too
    said = " ".join(capsys.readouterr().err.split())
    assert all(name in said for name in ("rotated", "born-digital-rotated", "low-contrast", "scanned-layout-a"))


def test_layout_goals_against_tesseract() -> None:
    # Given a scanned layout class read by rapidocr, with tesseract's reference from the corpus's table
    report = Report(engines=["rapidocr"])
    report.reference = {"layout/x-scan.pdf": 0.0, "layout/y-scan.pdf": 0.5}
    report.readings = [
        _reading("scanned-layout-b", "layout/x-scan.pdf:1", "rapidocr", "abcdefghij", "abcdefghij"),
        _reading("scanned-layout-b", "layout/y-scan.pdf:1", "rapidocr", "abcdeXXXXX", "abcdefghij"),
        _reading("born-digital-layout-b", "layout/y.pdf:1", "text", "abcdefghiX", "abcdefghij"),
    ]
    report.engines.append("text")
    checks = {(c.goal, c.cls, c.engine): c for c in check_goals(report)}
    # Then each scan is held to tesseract + 0.03, the class to tesseract's (weighted) mean
    assert checks[("scan <= tesseract + 0.03", "layout/x-scan.pdf", "rapidocr")].met is True
    assert checks[("scan <= tesseract + 0.03", "layout/y-scan.pdf", "rapidocr")].met is True
    assert checks[("class <= tesseract", "scanned-layout-b", "rapidocr")].bound == pytest.approx(0.25)
    assert checks[("class <= tesseract", "scanned-layout-b", "rapidocr")].met is True
    assert checks[("born-digital layout in reading order <= 0.01", "born-digital-layout-b", "text")].met is False


def test_tesseract_readings_replace_the_table() -> None:
    report = Report(engines=["rapidocr", "tesseract-psm3"])
    report.reference = {"layout/x-scan.pdf": 0.5}
    report.readings = [
        _reading("scanned-layout-a", "layout/x-scan.pdf:1", "rapidocr", "abcdefghiX", "abcdefghij"),
        _reading("scanned-layout-a", "layout/x-scan.pdf:1", "tesseract-psm3", "abcdefghij", "abcdefghij"),
    ]
    checks = {(c.goal, c.cls, c.engine): c for c in check_goals(report)}
    assert checks[("class <= tesseract", "scanned-layout-a", "rapidocr")].met is False
    assert checks[("two-column scans <= 0.03", "scanned-layout-a", "rapidocr")].met is False


def test_layout_reference_reads_the_corpus_table(corpus: Path) -> None:
    reference = layout_reference(corpus)
    assert len(reference) == 11
    assert reference["layout/dpr-multi-column-scan.pdf"] == pytest.approx(0.030)
