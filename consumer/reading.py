"""How a page is read, whatever process reads it: which engine, and what of the text layer is kept.

``auto`` takes the text layer where the page was judged to hold real text and
OCR otherwise; a ``hybrid`` page's layer is merged into its OCR, and where a
layer holds real text it witnesses the numbers OCR read. The worker applies
these rules across its sandbox (:mod:`consumer.child`); the benchmark and the
evaluation apply them in one process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from consumer.engines import OcrEngine, PageText, make_engine, page_text_from_blocks
from consumer.layout import merge_blocks
from consumer.pdf import PageSource, PdfDocument, TextLayer, has_real_text
from consumer.witness import number_disagreements
from schemas.messages import Block, Engine, JobOptions, NumberDisagreement, TextSource


@dataclass
class Engines:
    """The OCR engines this worker has loaded, made on first use and kept."""

    threads: int
    default: Engine
    model_dir: Path | None = None
    sim_ms: tuple[float, float] = (50.0, 10.0)
    alphabet: str = "latin"
    loaded: dict[Engine, OcrEngine] = field(default_factory=dict)

    def get(self, engine: Engine) -> OcrEngine:
        """The OCR engine for a job's choice; ``auto`` means this worker's default."""
        wanted = self.default if engine in (Engine.AUTO, Engine.TEXT) else engine
        if wanted not in self.loaded:
            self.loaded[wanted] = make_engine(
                wanted, threads=self.threads, model_dir=self.model_dir, sim_ms=self.sim_ms, alphabet=self.alphabet
            )
        return self.loaded[wanted]


def takes_text_layer(options: JobOptions, layer: TextLayer) -> bool:
    """``text`` always takes the layer; ``auto`` only when the page was judged ``text`` (real text that
    covers what is visible), so a born-digital page never reaches OCR and a scan always does."""
    return options.engine == Engine.TEXT or (options.engine == Engine.AUTO and layer.source == PageSource.TEXT)


def render_and_read(
    doc: PdfDocument, page_no: int, options: JobOptions, engines: Engines, max_megapixels: float
) -> tuple[PageText, Engine, float]:
    """Render a page and read it with the OCR engine the job asked for (the text, the engine, render ms); blocking."""
    engine = engines.get(options.engine)
    started = time.perf_counter()
    image = doc.render(page_no, dpi=options.dpi, max_megapixels=max_megapixels)
    render_ms = (time.perf_counter() - started) * 1000
    return engine.read(image), engine.name, render_ms


@dataclass(frozen=True)
class PageReading:
    """What the worker publishes of a page."""

    text: str
    blocks: list[Block]
    confidence: float
    engine: Engine
    render_ms: float
    source: TextSource
    rotation: int = 0
    disagreements: list[NumberDisagreement] = field(default_factory=list)


def from_text_layer(layer: TextLayer) -> PageReading:
    """A page read from its text layer alone."""
    return PageReading(layer.text, list(layer.blocks), 1.0, Engine.TEXT, 0.0, TextSource.TEXT)


def combine(layer: TextLayer | None, ocr: PageText, engine: Engine, render_ms: float) -> PageReading:
    """OCR of a page, merged with its text layer where the layer was judged ``hybrid``.

    Where the layer holds real text too (hybrid, or an invisible layer under a
    scan), it is a witness: numbers, amounts and dates the two read
    differently are listed, for a user to query.
    """
    witness = layer is not None and has_real_text(layer.text)
    disagreements = (
        [NumberDisagreement.model_validate(d) for d in number_disagreements(layer.text, ocr.text)]
        if witness and layer is not None
        else []
    )
    if layer is not None and layer.source == PageSource.HYBRID:
        merged = page_text_from_blocks(merge_blocks(list(layer.blocks), list(ocr.blocks)))
        return PageReading(
            merged.text,
            list(merged.blocks),
            merged.confidence,
            engine,
            render_ms,
            TextSource.HYBRID,
            ocr.rotation,
            disagreements,
        )
    return PageReading(
        ocr.text, list(ocr.blocks), ocr.confidence, engine, render_ms, TextSource.OCR, ocr.rotation, disagreements
    )
