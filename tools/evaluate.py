"""``pagewire eval``: how right is the text, per class of page and per engine, against the corpus's expected text.

Every page is read in this process with the functions the worker uses
(:class:`~consumer.pdf.PdfDocument`, :func:`tools.engine_loop.read_page`,
:func:`consumer.reading.render_and_read` and :class:`consumer.reading.Engines`), then
scored on whitespace-normalised text:

* **CER**: Levenshtein edits over the expected characters (reading order counts);
* **order-free CER**: the same on the words sorted, so a page read in the wrong
  order but with the right words scores near 0;
* **word recall**: the share of expected words (as a multiset) found.

Sums go over pages before dividing, so a long page weighs more than a short
one. Classes come from the corpus manifest, the synthetic pages split by
layout (``scanned-one-col``, ``scanned-two-col``, ...), and pages made on the
fly: ``rotated`` (scans whose page is turned 90 and 180 degrees with
``/Rotate``), ``born-digital-rotated`` and ``low-contrast`` (a born-digital
page rendered, lightened to grey on white and placed as an image-only page).

Engines: ``text`` (the text layer), ``rapidocr``, ``tesseract`` (tesseract's
lines through pagewire's reading order, as the worker's engine) and ``auto``
(the judged text layer of :attr:`consumer.pdf.TextLayer.source`: text, OCR
with rapidocr, or both merged), all read by :func:`tools.engine_loop.read_page`
exactly as the worker reads them; ``auto-worker`` is kept as another name for
``auto``. OCR results are cached by image, so engines that OCR the same page
pay for it once, and each page is charged what its reading first cost: wall
seconds and CPU seconds (this process's threads and its children, where
tesseract runs), so engines compare side by side on the same pages.

``tesseract-psm3`` is the reference: the tesseract binary's own text (``--psm
3``, its own layout analysis) of the same rendered page, where the binary is
installed; without it, its pages are left out and the reference is the
per-scan table of the corpus's ``LAYOUT.md``. The ``layout/`` classes
(``born-digital-layout-a`` to ``-d``, ``scanned-layout-a`` to ``-d``) have
goals of their own: born-digital pages within 0.01 of the expected reading
order, two-column scans within 0.03, each scanned class no worse than the
reference, and no scan worse than it by more than 0.03.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import re
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein

from consumer.engines import ALPHABETS, Image, OcrEngine, PageText, make_engine, read_each
from consumer.pdf import PDFIUM_LOCK, PageSource, PdfDocument, layer_text
from consumer.reading import Engines, takes_text_layer
from schemas.fields import clean_text
from schemas.messages import Engine, JobOptions
from tools.engine_loop import read_page

__all__ = [
    "ENGINES",
    "GOALS",
    "Goal",
    "Reading",
    "Sample",
    "Score",
    "add_parser",
    "check_goals",
    "corpus_samples",
    "evaluate",
    "layout_reference",
    "low_contrast_pdf",
    "rotated_pdf",
    "score_page",
    "tesseract_text",
]

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
"""``../shared/corpus`` next to the repository."""

ENGINES = ("text", "rapidocr", "tesseract", "auto", "auto-worker", "tesseract-psm3")
OCR_ENGINES = {"rapidocr": Engine.RAPIDOCR, "tesseract": Engine.TESSERACT}
REFERENCE = "tesseract-psm3"
"""The reference engine: tesseract with its own page layout analysis, on the page image."""
DEFAULT_ENGINES = ("text", "rapidocr", "auto")
MAX_MEGAPIXELS = 50.0
# Low contrast: ink is lightened to this grey (0 black, 255 white) on a white page.
LOW_CONTRAST_INK = 180
# Turns of the rotated classes (clockwise, as /Rotate).
ROTATIONS = (90, 180)
TESSERACT_ARGS = ("--psm", "3")
# How much worse than tesseract one scan of the layout classes may be.
LAYOUT_SCAN_SLACK = 0.03


# --------------------------------------------------------------------------- scoring


def normalise(text: str) -> str:
    """Whitespace-normalised text: words joined by single spaces."""
    return " ".join(text.split())


@dataclass
class Score:
    """Sums over pages; the rates divide them."""

    pages: int = 0
    chars: int = 0
    edits: int = 0
    sorted_edits: int = 0
    words: int = 0
    words_found: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def add(self, other: Score) -> None:
        """Add another page's (or class's) sums."""
        self.pages += other.pages
        self.chars += other.chars
        self.edits += other.edits
        self.sorted_edits += other.sorted_edits
        self.words += other.words
        self.words_found += other.words_found
        self.seconds += other.seconds
        self.cpu_seconds += other.cpu_seconds

    @property
    def cer(self) -> float:
        """Character error rate in reading order (edits over expected characters)."""
        return self.edits / self.chars if self.chars else (0.0 if self.edits == 0 else 1.0)

    @property
    def order_free_cer(self) -> float:
        """Character error rate on the words sorted (reading order does not count)."""
        return self.sorted_edits / self.chars if self.chars else (0.0 if self.sorted_edits == 0 else 1.0)

    @property
    def word_recall(self) -> float:
        """Share of the expected words found (as a multiset)."""
        return self.words_found / self.words if self.words else 1.0


def score_page(got: str, want: str, seconds: float = 0.0, cpu_seconds: float = 0.0) -> Score:
    """Score one page's text against its expected text, as pagewire's text fields can carry it:
    a control character the expected text holds (a symbol font's glyph a layer maps to one) is
    U+FFFD there, or a space where it is whitespace (:func:`schemas.fields.clean_text`), and
    pdfium's mark for a hyphen at a line end is the hyphen and the line end
    (:func:`consumer.pdf.layer_text`)."""
    got_n, want_n = normalise(got), normalise(layer_text(clean_text(want)))
    got_words, want_words = got_n.split(), want_n.split()
    found = sum((Counter(got_words) & Counter(want_words)).values())
    return Score(
        pages=1,
        chars=len(want_n),
        edits=Levenshtein.distance(got_n, want_n),
        sorted_edits=Levenshtein.distance(" ".join(sorted(got_words)), " ".join(sorted(want_words))),
        words=len(want_words),
        words_found=found,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
    )


# --------------------------------------------------------------------------- the pages


@dataclass(frozen=True)
class Sample:
    """One page to read: where it is, its class, and the text a perfect reader would give."""

    cls: str
    name: str
    source: Path | bytes = field(repr=False)
    page_no: int
    expected: str | None


def _layout_class(cls: str, layout: str) -> str:
    return f"{cls}-{layout.replace('_', '-')}" if cls == "scanned" else cls


def corpus_samples(corpus: Path, *, generated: bool = True) -> list[Sample]:
    """Every corpus page as a sample, then the generated classes (``generated``), in a stable order."""
    manifest: list[dict[str, Any]] = json.loads((corpus / "manifest.json").read_text())
    samples: list[Sample] = []
    expected_of: dict[str, list[str]] = {}
    for entry in manifest:
        path = corpus / entry["file"]
        expected: list[str] | None = json.loads((corpus / entry["expected"]).read_text()) if entry["expected"] else None
        if expected is not None:
            expected_of[entry["file"]] = expected
        layouts: list[str] | None = (
            json.loads((corpus / entry["layouts"]).read_text()) if entry.get("layouts") else None
        )
        for page_no in range(1, int(entry["pages"]) + 1):
            cls = entry["class"] if layouts is None else _layout_class(entry["class"], layouts[page_no - 1])
            want = expected[page_no - 1] if expected is not None else None
            samples.append(Sample(cls, f"{entry['file']}:{page_no}", path, page_no, want))
    if not generated:
        return samples
    # Sources of the generated classes: one-column pages, a synthetic and a real one.
    turned = [
        ("rotated", "synthetic/scanned_noisy.pdf", 1),
        ("rotated", "scanned/google-doc-document-scan.pdf", 1),
        ("born-digital-rotated", "synthetic/born_digital.pdf", 1),
    ]
    for cls, name, page_no in turned:
        want = expected_of[name][page_no - 1]
        for rotation in ROTATIONS:
            data = rotated_pdf(corpus / name, page_no, rotation)
            samples.append(Sample(cls, f"{name}:{page_no} turned {rotation}", data, 1, want))
    for name, page_no in (("synthetic/born_digital.pdf", 1), ("real/google-doc-document.pdf", 1)):
        want = expected_of[name][page_no - 1]
        samples.append(
            Sample("low-contrast", f"{name}:{page_no} lightened", low_contrast_pdf(corpus / name, page_no), 1, want)
        )
    return samples


def rotated_pdf(path: Path, page_no: int, rotation: int) -> bytes:
    """One page of ``path`` as a PDF of its own, its ``/Rotate`` turned ``rotation`` more degrees clockwise."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    with PDFIUM_LOCK:
        src = pdfium.PdfDocument(path)
        doc = pdfium.PdfDocument.new()
        try:
            doc.import_pages(src, [page_no - 1])
            page = doc[0]
            try:
                pdfium_c.FPDFPage_SetRotation(page.raw, ((page.get_rotation() + rotation) // 90) % 4)
            finally:
                page.close()
            out = io.BytesIO()
            doc.save(out)
        finally:
            doc.close()
            src.close()
    return out.getvalue()


def low_contrast_pdf(path: Path, page_no: int, *, dpi: int = 150, ink: int = LOW_CONTRAST_INK) -> bytes:
    """One page of ``path`` rendered in grey at ``dpi``, its ink lightened to ``ink``, as an image-only PDF.

    Grey levels are mapped linearly from 0..255 to ``ink``..255: black text
    becomes light grey, white stays white (a faded photocopy).
    """
    import pypdfium2 as pdfium
    from PIL import Image as PilImage

    with PdfDocument(path) as src:
        width, height = src.page_size(page_no)
        rgb = src.render(page_no, dpi=dpi, max_megapixels=MAX_MEGAPIXELS)
    grey = rgb.mean(axis=2)
    faded = (ink + grey * (255 - ink) / 255).round().astype(np.uint8)
    with PDFIUM_LOCK:
        doc = pdfium.PdfDocument.new()
        try:
            page = doc.new_page(width, height)
            image = pdfium.PdfImage.new(doc)
            bitmap = pdfium.PdfBitmap.from_pil(PilImage.fromarray(faded, mode="L").convert("RGB"))
            try:
                image.set_bitmap(bitmap)
            finally:
                bitmap.close()
            image.set_matrix(pdfium.PdfMatrix().scale(width, height))
            page.insert_obj(image)
            page.gen_content()
            page.close()
            out = io.BytesIO()
            doc.save(out)
        finally:
            doc.close()
    return out.getvalue()


def spread(samples: Sequence[Sample]) -> list[Sample]:
    """Samples of one class in round-robin order over their documents, so the first N span many documents."""
    by_doc: dict[str, list[Sample]] = {}
    for sample in samples:
        by_doc.setdefault(sample.name.rsplit(":", 1)[0], []).append(sample)
    queues = list(by_doc.values())
    ordered: list[Sample] = []
    while any(queues):
        for queue in queues:
            if queue:
                ordered.append(queue.pop(0))
    return ordered


# --------------------------------------------------------------------------- reading


class CachedEngine:
    """An OCR engine that remembers what it read, by image content: engines OCRing one page pay once."""

    def __init__(self, make: Callable[[], OcrEngine], name: Engine) -> None:
        """Wrap the engine ``make`` returns, made on the first reading (a run that needs no OCR loads no model)."""
        self._make = make
        self.inner: OcrEngine | None = None
        self.name: Engine = name
        self.cache: dict[str, tuple[PageText, float, float]] = {}
        self.reads = 0

    def load(self) -> OcrEngine:
        """The engine, made now if it was not yet (so that a page's cost leaves out model loading)."""
        if self.inner is None:
            self.inner = self._make()
        return self.inner

    def read(self, image: Image) -> PageText:
        """The cached reading of an identical image, else a new one."""
        key = hashlib.sha1(image.tobytes() + repr(image.shape).encode()).hexdigest()
        if key not in self.cache:
            inner = self.load()
            started, cpu = time.perf_counter(), cpu_seconds()
            result = inner.read(image)
            self.reads += 1
            self.cache[key] = (result, time.perf_counter() - started, cpu_seconds() - cpu)
        return self.cache[key][0]

    def read_batch(self, images: Sequence[Image]) -> list[PageText]:
        """Each image as :meth:`read` reads it."""
        return read_each(self, images)

    def cost(self, image: Image) -> tuple[float, float]:
        """What reading ``image`` cost the first time, wall and CPU seconds ((0, 0) if never read)."""
        key = hashlib.sha1(image.tobytes() + repr(image.shape).encode()).hexdigest()
        _, wall, cpu = self.cache.get(key, (None, 0.0, 0.0))
        return wall, cpu


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its children that have ended (tesseract's)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@dataclass
class Reading:
    """One page read by one engine."""

    cls: str
    name: str
    engine: str
    source: str
    """What actually read it: ``text``, or the OCR engine (``hybrid`` for auto's merged pages)."""
    seconds: float
    score: Score | None
    cpu_seconds: float = 0.0


def _needs_ocr(doc: PdfDocument, page_no: int, engine: str) -> tuple[bool, str]:
    """Whether ``engine`` would OCR the page, decided as it decides, before any OCR; and the judged source."""
    if engine == "text":
        return False, "text"
    if engine in (*OCR_ENGINES, REFERENCE):
        return True, engine
    layer = doc.text_layer(page_no)
    return not takes_text_layer(JobOptions(engine=Engine.AUTO), layer), str(layer.source)


def _read(doc: PdfDocument, page_no: int, engine: str, engines: Engines, dpi: int) -> tuple[str, str]:
    """Read one page as ``engine`` does; its text and what read it."""
    if engine == REFERENCE:
        return tesseract_text(doc.render(page_no, dpi=dpi, max_megapixels=MAX_MEGAPIXELS), dpi), REFERENCE
    wanted = {"text": Engine.TEXT, "auto": Engine.AUTO, "auto-worker": Engine.AUTO, **OCR_ENGINES}[engine]
    text, _, _, used, _ = read_page(doc, page_no, JobOptions(engine=wanted, dpi=dpi), engines, MAX_MEGAPIXELS)
    if wanted == Engine.AUTO and doc.text_layer(page_no).source == PageSource.HYBRID:
        return text, "hybrid"
    return text, str(used)


def tesseract_text(image: Image, dpi: int) -> str:
    """What the tesseract binary reads on an RGB page image (PNG on its stdin); blocking."""
    from PIL import Image as PilImage

    png = io.BytesIO()
    PilImage.fromarray(image).save(png, format="PNG", dpi=(dpi, dpi))
    done = subprocess.run(
        ["tesseract", "stdin", "stdout", *TESSERACT_ARGS], input=png.getvalue(), capture_output=True, check=True
    )
    return done.stdout.decode("utf-8", "replace")


def layout_reference(corpus: Path) -> dict[str, float]:
    """Tesseract's CER per ``layout/`` scan, by file name, from the table in the corpus's LAYOUT.md ({} without)."""
    path = corpus / "LAYOUT.md"
    if not path.is_file():
        return {}
    rows = re.findall(r"^\|\s*([\w.-]+)\s*\|\s*[a-d]\s*\|\s*([0-9.]+)\s*\|\s*$", path.read_text(), re.MULTILINE)
    return {f"layout/{name}-scan.pdf": float(cer) for name, cer in rows}


@dataclass
class Report:
    """Everything one run measured."""

    engines: list[str]
    readings: list[Reading] = field(default_factory=list)
    decisions: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per class: how many pages ``auto``'s judgement sends to text, ocr and hybrid."""
    judge_ms: list[float] = field(default_factory=list)
    """Per page: the text layer with its page objects judged (what ``auto`` pays on every page)."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Per ``class/engine``: pages left out by ``--max-ocr-pages``."""
    ocr_reads: int = 0
    wall_s: float = 0.0
    reference: dict[str, float] = field(default_factory=dict)
    """Tesseract's CER per scan file, where the corpus gives it (:func:`layout_reference`)."""


def evaluate(
    samples: Sequence[Sample],
    engines_wanted: Sequence[str],
    *,
    max_ocr_pages: int,
    dpi: int = 150,
    threads: int = 0,
    alphabet: str = "latin",
    progress: Any = None,
) -> Report:
    """Read every sample with every engine (at most ``max_ocr_pages`` OCR pages per class and engine); blocking."""
    report = Report(engines=list(engines_wanted))
    started = time.perf_counter()
    engines = Engines(threads=threads, default=Engine.RAPIDOCR)
    caches: dict[Engine, CachedEngine] = {}
    for name, ocr in OCR_ENGINES.items():
        if name in engines_wanted or (ocr == engines.default and any(e.startswith("auto") for e in engines_wanted)):
            caches[ocr] = CachedEngine(_maker(ocr, threads, alphabet), ocr)
            engines.loaded[ocr] = caches[ocr]
    by_class: dict[str, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample.cls, []).append(sample)
    for cls, members in by_class.items():
        ocr_used: Counter[str] = Counter()
        decisions: Counter[str] = Counter()
        for sample in spread(members):
            with PdfDocument(sample.source) as doc:
                t0 = time.perf_counter()
                decisions[str(doc.text_layer(sample.page_no).source)] += 1
                report.judge_ms.append((time.perf_counter() - t0) * 1000)
                if sample.expected is None:
                    continue  # nothing to score: the decision is all this page tells
                for engine in engines_wanted:
                    if engine in ("tesseract", REFERENCE) and shutil.which("tesseract") is None:
                        report.skipped[f"{cls}/{engine}"] = report.skipped.get(f"{cls}/{engine}", 0) + 1
                        continue
                    needs, _ = _needs_ocr(doc, sample.page_no, engine)
                    if needs and ocr_used[engine] >= max_ocr_pages:
                        report.skipped[f"{cls}/{engine}"] = report.skipped.get(f"{cls}/{engine}", 0) + 1
                        continue
                    ocr_used[engine] += needs
                    cache = caches.get(OCR_ENGINES.get(engine, engines.default))
                    if needs and cache is not None:
                        cache.load()  # a worker loads its models before it takes work: not a page's cost
                    t1, c1 = time.perf_counter(), cpu_seconds()
                    text, source = _read(doc, sample.page_no, engine, engines, dpi)
                    seconds, cpu = time.perf_counter() - t1, cpu_seconds() - c1
                    if needs and cache is not None:
                        # A cached page was paid for by the first engine that read it: charge its real cost.
                        wall_ocr, cpu_ocr = _ocr_cost(cache, doc, sample.page_no, dpi)
                        seconds, cpu = max(seconds, wall_ocr), max(cpu, cpu_ocr)
                    score = score_page(text, sample.expected, seconds, cpu)
                    report.readings.append(Reading(cls, sample.name, engine, source, seconds, score, cpu))
                    if progress is not None:
                        progress(f"{cls:22} {engine:11} {source:9} {seconds:6.2f} s {cpu:6.2f} CPU s  {sample.name}")
        report.decisions[cls] = dict(decisions)
    report.ocr_reads = sum(cache.reads for cache in caches.values())
    report.wall_s = time.perf_counter() - started
    return report


def _maker(engine: Engine, threads: int, alphabet: str) -> Callable[[], OcrEngine]:
    return lambda: make_engine(engine, threads=threads, alphabet=alphabet)


def _ocr_cost(cache: CachedEngine, doc: PdfDocument, page_no: int, dpi: int) -> tuple[float, float]:
    image = doc.render(page_no, dpi=dpi, max_megapixels=MAX_MEGAPIXELS)
    return cache.cost(image)


# --------------------------------------------------------------------------- summary and goals


@dataclass(frozen=True)
class Row:
    """One class read by one engine."""

    cls: str
    engine: str
    score: Score
    sources: dict[str, int]


def summarise(report: Report) -> list[Row]:
    """Per class and engine, the sums of the pages read."""
    rows: dict[tuple[str, str], Row] = {}
    for r in report.readings:
        row = rows.setdefault((r.cls, r.engine), Row(r.cls, r.engine, Score(), {}))
        if r.score is not None:
            row.score.add(r.score)
        row.sources[r.source] = row.sources.get(r.source, 0) + 1
    return list(rows.values())


@dataclass(frozen=True)
class Goal:
    """A quality goal: a bound on one class of pages."""

    name: str
    classes: tuple[str, ...]
    engines: tuple[str, ...]
    bound: float
    """The most CER allowed (0.0: exact)."""


GOALS = (
    Goal(
        "born-digital exact",
        ("born-digital", "born-digital-form", "born-digital-table", "born-digital-rotated"),
        ("text", "auto"),
        0.0,
    ),
    Goal("scanned one-column <= 0.03", ("scanned", "scanned-one-col"), ("rapidocr", "auto"), 0.03),
    Goal("scanned two-column <= 0.05", ("scanned-two-col",), ("rapidocr", "auto"), 0.05),
    Goal("rotated pages read (<= 0.05, our bar)", ("rotated",), ("rapidocr", "auto"), 0.05),
    Goal("low contrast read (<= 0.05, our bar)", ("low-contrast",), ("rapidocr", "auto"), 0.05),
    Goal(
        "born-digital layout in reading order <= 0.01",
        tuple(f"born-digital-layout-{c}" for c in "abcd"),
        ("text", "auto"),
        0.01,
    ),
    Goal("two-column scans <= 0.03", ("scanned-layout-a",), ("rapidocr", "auto"), 0.03),
)


@dataclass(frozen=True)
class GoalCheck:
    """One goal on one class and engine."""

    goal: str
    cls: str
    engine: str
    value: float
    bound: float
    met: bool


def check_goals(report: Report) -> list[GoalCheck]:
    """Every goal on every class and engine the report has, and auto against the best single engine per class."""
    rows = {(row.cls, row.engine): row for row in summarise(report)}
    checks = []
    for goal in GOALS:
        for cls in goal.classes:
            for engine in goal.engines:
                row = rows.get((cls, engine))
                if row is not None and row.score.pages:
                    value = row.score.cer
                    checks.append(GoalCheck(goal.name, cls, engine, value, goal.bound, value <= goal.bound + 1e-12))
    checks += _layout_checks(report)
    singles = [e for e in ("text", "rapidocr") if e in report.engines]
    if "auto" in report.engines and singles:
        for cls in sorted({r.cls for r in report.readings}):
            # Compare on the pages every engine read (--max-ocr-pages may leave some out for some engines).
            names = [{r.name for r in report.readings if r.cls == cls and r.engine == e} for e in [*singles, "auto"]]
            common = set.intersection(*names)
            if not common:
                continue
            cers = {}
            for engine in [*singles, "auto"]:
                total = Score()
                for r in report.readings:
                    if r.cls == cls and r.engine == engine and r.name in common and r.score is not None:
                        total.add(r.score)
                cers[engine] = total.cer
            best = min(cers[e] for e in singles)
            checks.append(
                GoalCheck(
                    "auto never worse than the best engine",
                    cls,
                    "auto",
                    cers["auto"],
                    best,
                    cers["auto"] <= best + 1e-12,
                )
            )
    return checks


def _layout_checks(report: Report) -> list[GoalCheck]:
    """Scanned layout classes against tesseract: each class no worse, each scan no worse by LAYOUT_SCAN_SLACK.

    Tesseract's own readings of the same pages where it ran, else the corpus's table
    (``report.reference``, per scan, weighted here by the pages' characters).
    """
    checks: list[GoalCheck] = []
    layout = [r for r in report.readings if r.cls.startswith("scanned-layout-") and r.score is not None]
    for engine in ("rapidocr", "auto"):
        for cls in sorted({r.cls for r in layout if r.engine == engine}):
            ours = [r for r in layout if r.cls == cls and r.engine == engine]
            names = {r.name for r in ours}
            theirs = [r for r in layout if r.cls == cls and r.engine == REFERENCE and r.name in names]
            docs: dict[str, list[Reading]] = {}
            for r in ours:
                docs.setdefault(r.name.rsplit(":", 1)[0], []).append(r)
            reference: dict[str, float] = {}
            for doc, pages in docs.items():
                mine = [t for t in theirs if t.name.rsplit(":", 1)[0] == doc]
                if len(mine) == len(pages):
                    reference[doc] = _total(mine).cer
                elif doc in report.reference:
                    reference[doc] = report.reference[doc]
            for doc, pages in sorted(docs.items()):
                if doc in reference:
                    value = _total(pages).cer
                    bound = reference[doc] + LAYOUT_SCAN_SLACK
                    checks.append(GoalCheck("scan <= tesseract + 0.03", doc, engine, value, bound, value <= bound))
            if docs and all(doc in reference for doc in docs):
                total = _total(ours)
                chars = sum(_total(pages).chars for pages in docs.values())
                bound = sum(reference[d] * _total(p).chars for d, p in docs.items()) / chars if chars else 0.0
                checks.append(
                    GoalCheck("class <= tesseract", cls, engine, total.cer, bound, total.cer <= bound + 1e-12)
                )
    return checks


def _total(readings: Sequence[Reading]) -> Score:
    total = Score()
    for r in readings:
        if r.score is not None:
            total.add(r.score)
    return total


# --------------------------------------------------------------------------- output


def to_json(report: Report) -> dict[str, Any]:
    """The report as one JSON-ready object."""
    return {
        "engines": report.engines,
        "classes": [
            {
                "class": row.cls,
                "engine": row.engine,
                "pages": row.score.pages,
                "cer": row.score.cer,
                "order_free_cer": row.score.order_free_cer,
                "word_recall": row.score.word_recall,
                "seconds_per_page": row.score.seconds / row.score.pages if row.score.pages else 0.0,
                "cpu_seconds_per_page": row.score.cpu_seconds / row.score.pages if row.score.pages else 0.0,
                "sources": row.sources,
            }
            for row in summarise(report)
        ],
        "goals": [asdict(check) for check in check_goals(report)],
        "auto_decisions": report.decisions,
        "judge_ms": _stats(report.judge_ms),
        "skipped": report.skipped,
        "tesseract_reference": report.reference,
        "ocr_reads": report.ocr_reads,
        "wall_s": report.wall_s,
        "pages": [
            {
                "class": r.cls,
                "page": r.name,
                "engine": r.engine,
                "source": r.source,
                "seconds": r.seconds,
                "cpu_seconds": r.cpu_seconds,
                "cer": r.score.cer if r.score else None,
                "order_free_cer": r.score.order_free_cer if r.score else None,
                "word_recall": r.score.word_recall if r.score else None,
            }
            for r in report.readings
        ],
    }


def _stats(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "pages": len(ordered),
        "mean": sum(ordered) / len(ordered),
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
        "max": ordered[-1],
    }


def render_report(report: Report, console: Any) -> None:
    """Print the tables: per class and engine, the goals, auto's decisions."""
    from rich.table import Table

    table = Table(title="Text quality per class and engine (CER: character error rate, lower is better)")
    for name, justify in (
        ("class", "left"),
        ("engine", "left"),
        ("pages", "right"),
        ("CER", "right"),
        ("order-free CER", "right"),
        ("word recall", "right"),
        ("s/page", "right"),
        ("CPU s/page", "right"),
        ("read by", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    previous = None
    for row in summarise(report):
        if previous is not None and row.cls != previous:
            table.add_section()
        previous = row.cls
        s = row.score
        table.add_row(
            row.cls,
            row.engine,
            str(s.pages),
            f"{s.cer:.4f}",
            f"{s.order_free_cer:.4f}",
            f"{s.word_recall:.4f}",
            f"{s.seconds / s.pages:.2f}" if s.pages else "",
            f"{s.cpu_seconds / s.pages:.2f}" if s.pages else "",
            ", ".join(f"{k} {v}" for k, v in sorted(row.sources.items())),
        )
    console.print(table)
    goals = Table(title="Goals")
    for name in ("goal", "class", "engine", "CER", "bound", ""):
        goals.add_column(name)
    for check in check_goals(report):
        goals.add_row(
            check.goal,
            check.cls,
            check.engine,
            f"{check.value:.4f}",
            f"{check.bound:.4f}",
            "[green]met[/green]" if check.met else "[red]missed[/red]",
        )
    console.print(goals)
    layout_pages = [r for r in report.readings if r.cls.endswith(tuple(f"layout-{c}" for c in "abcd"))]
    if layout_pages:
        pages = Table(title="layout/ pages (CER per page and engine)")
        engines = [e for e in report.engines if any(r.engine == e for r in layout_pages)]
        for name in ("class", "page", *engines):
            pages.add_column(name, justify="left" if name in ("class", "page") else "right")
        cells: dict[tuple[str, str], dict[str, str]] = {}
        for r in layout_pages:
            cells.setdefault((r.cls, r.name), {})[r.engine] = f"{r.score.cer:.4f}" if r.score else ""
        for (cls, name), by_engine in sorted(cells.items()):
            pages.add_row(cls, name, *(by_engine.get(e, "") for e in engines))
        console.print(pages)
    decisions = Table(title="auto's judgement per page (text layer, OCR, or both)")
    for name in ("class", "pages", "text", "ocr", "hybrid"):
        decisions.add_column(name, justify="left" if name == "class" else "right")
    for cls, counts in report.decisions.items():
        decisions.add_row(cls, str(sum(counts.values())), *(str(counts.get(k, 0)) for k in ("text", "ocr", "hybrid")))
    console.print(decisions)
    judge = _stats(report.judge_ms)
    if judge:
        console.print(
            "text layer with its page objects, per page (what auto reads before deciding): "
            f"mean {judge['mean']:.2f} ms, p50 {judge['p50']:.2f}, "
            f"p95 {judge['p95']:.2f}, max {judge['max']:.2f} over {int(judge['pages'])} pages"
        )
    if report.skipped:
        console.print(
            "left out by --max-ocr-pages: " + ", ".join(f"{k} {v}" for k, v in sorted(report.skipped.items()))
        )
    console.print(f"{report.ocr_reads} OCR readings, {report.wall_s:.0f} s in all")


# --------------------------------------------------------------------------- the command


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` to ``pagewire``'s subcommands; its ``func`` is :func:`run`."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "eval",
        help="measure text quality per class of page and engine against the corpus",
        description=(
            "Read the corpus pages in this process with each engine (as the worker does) and print character error "
            "rate, order-free error rate and word recall per class of page, with the quality goals of docs/quality.md."
        ),
    )
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help=f"the corpus directory ({DEFAULT_CORPUS})")
    p.add_argument(
        "--engines",
        type=_csv,
        default=list(DEFAULT_ENGINES),
        help=f"comma-separated, of {', '.join(ENGINES)} (default {','.join(DEFAULT_ENGINES)})",
    )
    p.add_argument("--classes", type=_csv, default=None, help="comma-separated classes to read (default: all)")
    p.add_argument(
        "--max-ocr-pages",
        type=int,
        default=4,
        help="at most this many OCR pages per class and engine (4; OCR costs ~5 s a page on 2 cores)",
    )
    p.add_argument("--dpi", type=int, default=150, help="render resolution for OCR (150)")
    p.add_argument("--threads", type=int, default=0, help="OCR threads (0: the cores this process may use)")
    p.add_argument(
        "--alphabet",
        choices=ALPHABETS,
        default="latin",
        help="what rapidocr reads, as the worker's PAGEWIRE_OCR_ALPHABET (latin)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    """``pagewire eval``: read, score, print; 0, or 1 with ``--check`` when a goal is missed (2: bad arguments)."""
    from rich.console import Console

    console = Console(stderr=args.json, width=None if sys.stdout.isatty() else 140)
    errors = Console(stderr=True)
    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown or not args.engines:
        errors.print(f"unknown engines: {', '.join(unknown) or '(none given)'}; choose from {', '.join(ENGINES)}")
        return 2
    if not (args.corpus / "manifest.json").is_file():
        errors.print(f"no corpus at {args.corpus} (no manifest.json)")
        return 2
    samples = corpus_samples(args.corpus, generated=_wants_generated(args.classes))
    if args.classes:
        known = {s.cls for s in samples} | GENERATED_CLASSES
        missing = [c for c in args.classes if c not in known]
        if missing:
            errors.print(f"unknown classes: {', '.join(missing)}; the corpus has {', '.join(sorted(known))}")
            return 2
        samples = [s for s in samples if s.cls in args.classes]
    report = evaluate(
        samples,
        args.engines,
        max_ocr_pages=args.max_ocr_pages,
        dpi=args.dpi,
        threads=args.threads,
        alphabet=args.alphabet,
        progress=None if args.quiet else errors.log,
    )
    report.reference = layout_reference(args.corpus)
    if args.json:
        print(json.dumps(to_json(report), indent=2))
    else:
        render_report(report, console)
    missed = [check for check in check_goals(report) if not check.met]
    return 1 if args.check and missed else 0


# The classes made from corpus pages on the spot (turned, lightened), only where asked for.
GENERATED_CLASSES = frozenset({"rotated", "born-digital-rotated", "low-contrast"})


def _wants_generated(classes: Iterable[str] | None) -> bool:
    return classes is None or bool(GENERATED_CLASSES & set(classes))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tools.evaluate``: the same command outside ``pagewire``."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate", description="pagewire eval")
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
