"""Where a page's OCR seconds go: rapidocr stage by stage (and tesseract beside it) on given PDF pages.

Usage::

    PYTHONPATH=. .venv/bin/python scripts/profile_ocr.py \\
        ../shared/corpus/layout/aviation-safety-table-scan.pdf:1 ../shared/corpus/scanned/issue13201-scan.pdf:1
    ... --threads 1 --set Rec.rec_batch_num=12 --set Det.limit_side_len=960 --tesseract

Each page is rendered as the worker renders it (150 dpi unless ``--dpi``) and
read by :class:`consumer.engines.RapidOcrEngine` (with ``--set`` overrides of
rapidocr's options; a value is parsed as JSON where it can be). The model
sessions are wrapped so that every call is timed in wall and in process CPU
seconds (all threads), with its input shape: detection, and each recognition
batch. Printed per page: image and detector input sizes, boxes, the
recognition batches (count, padded width, seconds), and what the rest
(cropping, pre- and post-processing, reading order) cost. ``--tesseract``
reads the same image with :class:`consumer.engines.TesseractEngine` too,
charged with its child process's CPU time. ``--repeat N`` reads each page N
times and keeps the cheapest (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from consumer.engines import RapidOcrEngine, TesseractEngine  # noqa: E402
from consumer.pdf import PdfDocument  # noqa: E402


@dataclass
class Calls:
    """Every call of one model session: wall and CPU seconds, and the input shapes."""

    wall: float = 0.0
    cpu: float = 0.0
    shapes: list[tuple[int, ...]] = field(default_factory=list)


class Timed:
    """Stands in for a rapidocr inference session and times its calls."""

    def __init__(self, inner: Any, calls: Calls) -> None:
        self.inner = inner
        self.calls = calls

    def __call__(self, batch: Any) -> Any:
        w0, c0 = time.perf_counter(), time.process_time()
        out = self.inner(batch)
        self.calls.wall += time.perf_counter() - w0
        self.calls.cpu += time.process_time() - c0
        self.calls.shapes.append(tuple(batch.shape))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parse_page(spec: str) -> tuple[Path, list[int]]:
    path, _, pages = spec.partition(":")
    return Path(path), [int(p) for p in pages.split(",")] if pages else [1]


def parse_set(items: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def profile_rapidocr(engine: RapidOcrEngine, image: Any) -> dict[str, Any]:
    ocr = engine._ocr
    det, rec = Calls(), Calls()
    ocr.text_det.session = Timed(ocr.text_det.session, det)
    ocr.text_rec.session = Timed(ocr.text_rec.session, rec)
    try:
        w0, c0 = time.perf_counter(), time.process_time()
        page = engine.read(image)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    finally:
        ocr.text_det.session = ocr.text_det.session.inner
        ocr.text_rec.session = ocr.text_rec.session.inner
    widths = [s[3] for s in rec.shapes]
    return {
        "wall": wall,
        "cpu": cpu,
        "det_wall": det.wall,
        "det_cpu": det.cpu,
        "det_input": "x".join(str(v) for v in det.shapes[0][2:]) if det.shapes else "-",
        "rec_wall": rec.wall,
        "rec_cpu": rec.cpu,
        "batches": len(rec.shapes),
        "lines": sum(s[0] for s in rec.shapes),
        "rec_px": sum(s[0] * s[3] for s in rec.shapes),
        "max_width": max(widths) if widths else 0,
        "blocks": len(page.blocks),
        "chars": len(page.text),
        "confidence": page.confidence,
    }


def profile_tesseract(engine: TesseractEngine, image: Any) -> dict[str, Any]:
    w0, c0, k0 = time.perf_counter(), time.process_time(), child_cpu()
    page = engine.read(image)
    return {
        "wall": time.perf_counter() - w0,
        "cpu": time.process_time() - c0 + child_cpu() - k0,
        "blocks": len(page.blocks),
        "chars": len(page.text),
        "confidence": page.confidence,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="+", metavar="PDF[:N,M]", help="PDF files and 1-based pages (default page 1)")
    parser.add_argument("--dpi", type=int, default=150)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: the cores)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a rapidocr option")
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "openvino"])
    parser.add_argument("--det-precision", default="f32", help="OpenVINO's precision for detection (bf16, f32)")
    parser.add_argument("--rec-precision", default="bf16", help="OpenVINO's precision for recognition (bf16, f32)")
    parser.add_argument("--alphabet", default="latin", help="what recognition reads: latin or all")
    parser.add_argument("--spinning", action="store_true", help="let onnxruntime threads spin while waiting")
    parser.add_argument("--tesseract", action="store_true", help="read with tesseract too")
    parser.add_argument("--no-rapidocr", action="store_true", help="tesseract only")
    parser.add_argument("--repeat", type=int, default=1, help="read each page N times, keep the cheapest")
    parser.add_argument("--json", action="store_true", help="one JSON line per page and engine")
    args = parser.parse_args(argv)

    rapid = (
        None
        if args.no_rapidocr
        else RapidOcrEngine(
            threads=args.threads,
            options=parse_set(args.set),
            spinning=args.spinning,
            backend=args.backend,
            det_precision=args.det_precision,
            rec_precision=args.rec_precision,
            alphabet=args.alphabet,
        )
    )
    tess = TesseractEngine() if args.tesseract or args.no_rapidocr else None
    if not args.json:
        print(
            f"{'page':38} {'engine':9} {'size':>9} {'CPU s':>6} {'wall s':>6} {'det in':>9} {'det CPU':>7} "
            f"{'rec CPU':>7} {'batch':>5} {'lines':>5} {'rec px':>7} {'other':>6} {'blocks':>6}"
        )
    for spec in args.pages:
        path, page_numbers = parse_page(spec)
        for page_no in page_numbers:
            with PdfDocument(path) as doc:
                image = doc.render(page_no, dpi=args.dpi, max_megapixels=50)
            name = f"{path.name}:{page_no}"
            size = f"{image.shape[1]}x{image.shape[0]}"
            for label, engine in (("rapidocr", rapid), ("tesseract", tess)):
                if engine is None:
                    continue
                runs = [
                    profile_rapidocr(engine, image) if label == "rapidocr" else profile_tesseract(engine, image)  # type: ignore[arg-type]
                    for _ in range(args.repeat)
                ]
                r = min(runs, key=lambda run: run["cpu"])
                if args.json:
                    print(json.dumps({"page": name, "engine": label, "size": size, **r}))
                    continue
                if label == "rapidocr":
                    other = r["cpu"] - r["det_cpu"] - r["rec_cpu"]
                    print(
                        f"{name[-38:]:38} {label:9} {size:>9} {r['cpu']:6.2f} {r['wall']:6.2f} {r['det_input']:>9} "
                        f"{r['det_cpu']:7.2f} {r['rec_cpu']:7.2f} {r['batches']:5d} {r['lines']:5d} "
                        f"{r['rec_px']:7d} {other:6.2f} {r['blocks']:6d}"
                    )
                else:
                    print(
                        f"{name[-38:]:38} {label:9} {size:>9} {r['cpu']:6.2f} {r['wall']:6.2f} {'':>9} {'':>7} "
                        f"{'':>7} {'':>5} {'':>5} {'':>7} {'':>6} {r['blocks']:6d}"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
