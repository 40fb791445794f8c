"""Cache what reading order works on for the corpus's layout/ pages, so ordering can be tuned in seconds.

Usage::

    PYTHONPATH=. .venv/bin/python scripts/layout_cache.py --out /tmp/layout-cache --dpi 150 200
    PYTHONPATH=. .venv/bin/python scripts/layout_cache.py --out /tmp/layout-cache --text-only

For each scan (``NAME-scan.pdf``) and each dpi, the page is rendered and read
by rapidocr as the worker does; the boxes (text, page-fraction box,
confidence) are written to ``NAME-scan.p{page}.{dpi}.json`` with the OCR
seconds. For each born-digital PDF the text layer's boxes, in the layer's own
order, and its text go to ``NAME.p{page}.text.json``. Existing files are kept.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from consumer.engines import make_engine
from consumer.pdf import PdfDocument
from schemas.messages import Engine

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--out", type=Path, default=Path("/tmp/layout-cache"))
    parser.add_argument("--dpi", type=int, nargs="*", default=[150, 200])
    parser.add_argument("--text-only", action="store_true")
    parser.add_argument("--only", nargs="*", default=None, help="names (without .pdf) to cache")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((args.corpus / "manifest.json").read_text())
    entries = [e for e in manifest if e["file"].startswith("layout/")]
    engine = None
    for entry in entries:
        path = args.corpus / entry["file"]
        name = path.stem
        if args.only is not None and name not in args.only:
            continue
        with PdfDocument(path) as doc:
            for page_no in range(1, entry["pages"] + 1):
                if not name.endswith("-scan"):
                    target = args.out / f"{name}.p{page_no}.text.json"
                    if target.exists():
                        continue
                    layer = doc.text_layer(page_no)
                    boxes = [{"text": t, "bbox": list(b), "confidence": c} for t, b, c in layer.boxes]
                    target.write_text(json.dumps({"text": layer.text, "blocks": boxes}))
                    continue
                if args.text_only:
                    continue
                for dpi in args.dpi:
                    target = args.out / f"{name}.p{page_no}.{dpi}.json"
                    if target.exists():
                        continue
                    if engine is None:
                        engine = make_engine(Engine.RAPIDOCR)
                    image = doc.render(page_no, dpi=dpi, max_megapixels=50.0)
                    started = time.perf_counter()
                    result = engine.read(image)
                    seconds = time.perf_counter() - started
                    boxes = [b.model_dump(mode="json") for b in result.blocks]
                    target.write_text(json.dumps({"seconds": seconds, "blocks": boxes}))
                    print(f"{target.name}: {len(boxes)} boxes, {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
