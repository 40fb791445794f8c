"""Score reading order on the corpus's layout/ pages, from the boxes scripts/layout_cache.py cached.

Usage::

    PYTHONPATH=. .venv/bin/python scripts/layout_cache.py --dpi 150 200     # once: OCR, minutes
    PYTHONPATH=. .venv/bin/python scripts/layout_score.py                   # seconds
    PYTHONPATH=. .venv/bin/python scripts/layout_score.py --dpi 150 200 300 --pages

Scans: the cached rapidocr boxes of each page, put in order by
:func:`consumer.layout.blocks_to_text` (what the engine does after reading),
against the expected text, next to tesseract's error on the same scan (from
LAYOUT.md); per scan, per class, and split into the documents tuned on and the
three held out (one of classes a, c and d). Born-digital pages: the text layer
as :meth:`consumer.pdf.PdfDocument.text_layer` gives it (in reading order where
its own order is wrong) and in its own order. Also the cost: CPU time of the
ordering per scanned page against its OCR time, and of
:func:`consumer.layout.layer_order` per text page. Error rates as ``pagewire
eval``: Levenshtein edits over the expected characters, whitespace folded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rapidfuzz.distance import Levenshtein

from consumer import pdf
from consumer.engines import page_text_from_blocks
from consumer.layout import blocks_to_text, layer_order
from consumer.pdf import PdfDocument
from schemas.messages import Block
from tools.evaluate import layout_reference

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
HELD_OUT = {"ieee-privacy-paper", "aviation-safety-table", "dmca-summary"}


def folded(text: str) -> str:
    return " ".join(text.split())


def edits(got: str, want: str) -> tuple[int, int]:
    return Levenshtein.distance(folded(got), folded(want)), len(folded(want))


def cpu_seconds(call: Any, repeat: int = 5) -> float:
    """The least CPU time of a few calls (the machine may be shared)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.thread_time()
        call()
        best = min(best, time.thread_time() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/layout-cache"))
    parser.add_argument("--dpi", type=int, nargs="*", default=[150, 200])
    parser.add_argument("--pages", action="store_true", help="a line per page too")
    args = parser.parse_args()
    manifest = json.loads((args.corpus / "manifest.json").read_text())
    scans = [e for e in manifest if e["class"].startswith("scanned-layout-")]
    texts = [e for e in manifest if e["class"].startswith("born-digital-layout-")]
    # tesseract 5.3 --psm 3 on the 200-dpi scans: the table in the corpus's LAYOUT.md.
    tesseract = layout_reference(args.corpus)

    for dpi in args.dpi:
        print(f"\n## scans at {dpi} dpi\n\n| scan | class | set | CER | tesseract (200 dpi) |\n|---|---|---|---|---|")
        by_class: dict[str, list[tuple[float, float]]] = {}
        by_set: dict[str, list[tuple[float, float]]] = {}
        order_s = ocr_s = 0.0
        pages = 0
        for entry in scans:
            name = Path(entry["file"]).name.removesuffix("-scan.pdf")
            wanted = json.loads((args.corpus / entry["expected"]).read_text())
            total = [0, 0]
            for page_no, want in enumerate(wanted, start=1):
                cached = args.cache / f"{name}-scan.p{page_no}.{dpi}.json"
                if not cached.exists():
                    break
                data = json.loads(cached.read_text())
                blocks = [Block.model_validate(b) for b in data["blocks"]]
                e, n = edits(blocks_to_text(blocks), want)
                total[0] += e
                total[1] += n
                order_s += cpu_seconds(lambda blocks=blocks: page_text_from_blocks(blocks))
                ocr_s += data["seconds"]
                pages += 1
                if args.pages:
                    print(f"| {name} p{page_no} | | | {e / n:.3f} | |")
            if not total[1]:
                continue
            got = total[0] / total[1]
            theirs = tesseract[f"layout/{name}-scan.pdf"]
            kind = "held out" if name in HELD_OUT else "tuning"
            print(f"| {name} | {entry['class'][-1]} | {kind} | {got:.4f} | {theirs:.3f} |")
            by_class.setdefault(entry["class"][-1], []).append((got, theirs))
            by_set.setdefault(kind, []).append((got, theirs))
        print("\n| class / set | mean CER | tesseract mean |\n|---|---|---|")
        for key, scores in [*sorted(by_class.items()), *sorted(by_set.items())]:
            mean = sum(g for g, _ in scores) / len(scores)
            reference = sum(t for _, t in scores) / len(scores)
            print(f"| {key} | {mean:.4f} | {reference:.4f} |")
        if pages:
            print(f"\nordering {order_s / pages * 1e3:.2f} ms a page (CPU), OCR {ocr_s / pages:.1f} s a page")

    print("\n## born-digital layout pages\n\n| document | page | CER in reading order | CER in the layer's order |")
    print("|---|---|---|---|")
    layer_s = 0.0
    layer_pages = 0
    for entry in texts:
        wanted = json.loads((args.corpus / entry["expected"]).read_text())
        with PdfDocument(args.corpus / entry["file"]) as doc:
            for page_no, want in enumerate(wanted, start=1):
                layer = doc.text_layer(page_no)
                boxes = layer.boxes
                layer_s += cpu_seconds(lambda boxes=boxes: layer_order(boxes))
                layer_pages += 1
                ordered = edits(layer.text, want)
                original = pdf.layer_order
                pdf.layer_order = lambda boxes: None  # type: ignore[assignment]
                try:
                    own = edits(doc.text_layer(page_no).text, want)
                finally:
                    pdf.layer_order = original
                print(f"| {entry['file']} | {page_no} | {ordered[0] / ordered[1]:.4f} | {own[0] / own[1]:.4f} |")
    print(f"\nlayer_order {layer_s / layer_pages * 1e6:.0f} us a page (CPU, on the boxes in reading order)")


if __name__ == "__main__":
    main()
