"""The sandbox child's side of the worker: pdfium and the OCR engines live in this process alone.

The worker calls these functions through :class:`consumer.sandbox.Sandbox`,
so a page that crashes pdfium, runs past its time budget or its memory cap
takes down the child, never the worker.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

from consumer.engines import PageText
from consumer.pdf import PdfDocument, TextLayer
from consumer.reading import Engines, render_and_read
from consumer.shared_images import SharedImage, opened, share
from schemas.errors import PermanentError
from schemas.messages import Engine, JobOptions

_child_engines: Engines | None = None
_child_docs: OrderedDict[str, PdfDocument] = OrderedDict()


def child_setup(
    threads: int,
    default: Engine,
    model_dir: Path | None,
    sim_ms: tuple[float, float] = (50.0, 10.0),
    alphabet: str = "latin",
) -> None:
    """In the sandbox child: load the default engine before the first page."""
    global _child_engines
    _child_engines = Engines(threads=threads, default=default, model_dir=model_dir, sim_ms=sim_ms, alphabet=alphabet)
    _child_engines.get(default)


def _child_doc(path: str) -> PdfDocument:
    # A task's pages, and usually a job's tasks, come one after another: keep a few open.
    doc = _child_docs.pop(path, None) or PdfDocument(Path(path))
    _child_docs[path] = doc
    while len(_child_docs) > 4:
        _child_docs.popitem(last=False)[1].close()
    return doc


def child_text_layer(path: str, page_no: int) -> TextLayer:
    """In the sandbox child: a page's text layer."""
    return _child_doc(path).text_layer(page_no)


LayerReading = tuple[TextLayer | PermanentError, float]
"""A page's text layer (or why it could not be read) and the milliseconds it took."""


def child_text_layers(path: str, page_nos: list[int]) -> list[LayerReading]:
    """In the sandbox child: the text layers of a run of pages, in one call; a bad page fails alone."""
    doc = _child_doc(path)
    out: list[LayerReading] = []
    for page_no in page_nos:
        started = time.perf_counter()
        try:
            layer: TextLayer | PermanentError = doc.text_layer(page_no)
        except PermanentError as exc:
            layer = exc
        out.append((layer, (time.perf_counter() - started) * 1000))
    return out


def child_ocr_page(
    path: str, page_no: int, options: JobOptions, max_megapixels: float
) -> tuple[PageText, Engine, float]:
    """In the sandbox child: render and OCR a page (text, the engine, render ms)."""
    assert _child_engines is not None, "child_setup did not run"
    return render_and_read(_child_doc(path), page_no, options, _child_engines, max_megapixels)


# --- the batched pipeline: renders in a pool of children, reading in the device's child ---------


def child_render(path: str, page_no: int, dpi: int, max_megapixels: float) -> tuple[SharedImage, float]:
    """In a render child: a page's image, in shared memory, and the milliseconds rendering took."""
    started = time.perf_counter()
    image = _child_doc(path).render(page_no, dpi=dpi, max_megapixels=max_megapixels)
    return share(image), (time.perf_counter() - started) * 1000


def child_read_batch(images: list[SharedImage], engine: Engine) -> tuple[list[PageText], Engine, float]:
    """In the device's child: read rendered pages in one batch (their texts, the engine, seconds reading)."""
    assert _child_engines is not None, "child_setup did not run"
    reader = _child_engines.get(engine)
    with opened(images) as arrays:
        started = time.perf_counter()
        texts = reader.read_batch(arrays)
        return texts, reader.name, time.perf_counter() - started
