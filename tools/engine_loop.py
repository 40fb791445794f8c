"""The bare engine loop: pages read in this process by the worker's own rules, with no broker, S3 or database.

``pagewire bench`` measures the stack against it, and ``pagewire eval`` reads
its samples with it, so both see exactly the text the worker would publish.
"""

from __future__ import annotations

from consumer.pdf import PdfDocument, TextLayer
from consumer.reading import Engines, combine, render_and_read, takes_text_layer
from schemas.messages import Block, Engine, JobOptions

PageResult = tuple[str, list[Block], float, Engine, float]
"""Text, blocks, confidence, the engine that read the page, and render milliseconds."""


def read_page(
    doc: PdfDocument, page_no: int, options: JobOptions, engines: Engines, max_megapixels: float
) -> PageResult:
    """Read one page in this process, as the worker does; blocking. The bare engine loop of ``pagewire bench``."""
    layer: TextLayer | None = None
    if options.engine in (Engine.TEXT, Engine.AUTO):
        layer = doc.text_layer(page_no)
        if takes_text_layer(options, layer):
            return layer.text, list(layer.blocks), 1.0, Engine.TEXT, 0.0
    reading = combine(layer, *render_and_read(doc, page_no, options, engines, max_megapixels))
    return reading.text, reading.blocks, reading.confidence, reading.engine, reading.render_ms
