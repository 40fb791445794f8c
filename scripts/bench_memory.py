"""Long born-digital PDFs through the dev stack: the worker's peak memory, and time against pages.

Usage (the stack comes up idempotently with ``dev up`` unless ``--no-dev-up``)::

    .venv/bin/python scripts/bench_memory.py                 # 250, 500 and 1000 pages
    .venv/bin/python scripts/bench_memory.py --pages 1000 --json
    .venv/bin/python scripts/bench_memory.py --scanned --pages 5 20   # OCR pages: ~2.5 s each

For each size it builds a born-digital PDF (30 lines of Helvetica a page,
written by pdfium; with ``--scanned``, the same kind of text as page
pictures, for OCR), submits it as one job in ``auto`` mode, and waits for its
``JobCompleted``. Meanwhile a thread samples ``VmRSS`` of the planner, worker
and recorder every 20 ms from ``/proc`` (their pids from ``.dev/state.json``),
each role counted with its sandbox child, where pdfium and the OCR models
live; ``VmHWM`` (the kernel's peak of each process since it started, model
loading included; summed over the role's processes) is read after. Time per
page at each size shows whether the time is linear in pages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from schemas.messages import Engine, JobFailed, JobOptions, PageCompleted  # noqa: E402
from schemas.settings import ClientSettings  # noqa: E402
from tools import devstack  # noqa: E402
from tools.bench import descendants, dev_pid, job_events  # noqa: E402
from tools.samples import lines, long_text_pdf, scanned_pdf  # noqa: E402

ROLES = ("planner", "worker", "recorder")


def status_kib(pid: int, field: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``) in KiB, or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def tree_kib(pids: list[int], field: str) -> int:
    """A ``/proc/PID/status`` field summed over processes (those gone count 0)."""
    return sum(status_kib(pid, field) or 0 for pid in pids)


class RssSampler(threading.Thread):
    """Samples the summed ``VmRSS`` of each role's processes every ``every_s`` and keeps the largest."""

    def __init__(self, pids: dict[str, list[int]], every_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.every_s = every_s
        self.peak_kib: dict[str, int] = dict.fromkeys(pids, 0)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for name, tree in self.pids.items():
                self.peak_kib[name] = max(self.peak_kib[name], tree_kib(tree, "VmRSS"))
            self.stop.wait(self.every_s)


@dataclass
class SizeRun:
    """One job of ``pages`` pages."""

    pages: int
    pdf_bytes: int
    seconds: float
    ms_per_page: float
    first_page_s: float
    rss_before_mib: dict[str, float]
    rss_peak_mib: dict[str, float]
    hwm_after_mib: dict[str, float]


async def run_one(settings: ClientSettings, pdf: bytes, pages: int, roles: dict[str, int]) -> SizeRun:
    """Submit one PDF and follow it to ``JobCompleted`` while sampling the roles' memory."""
    from producer.api import Client

    pids = {name: descendants(pid) for name, pid in roles.items()}
    before = {name: tree_kib(tree, "VmRSS") / 1024 for name, tree in pids.items()}
    sampler = RssSampler(pids)
    sampler.start()
    first = float("nan")
    try:
        async with Client(settings) as client, client.subscribe() as events:
            t0 = time.perf_counter()
            request = await client.submit(pdf, options=JobOptions(engine=Engine.AUTO), submitted_by="bench_memory")
            async for event in job_events(events, {request.job_id}):
                if isinstance(event, PageCompleted) and first != first:  # NaN: not seen yet
                    first = time.perf_counter() - t0
                if isinstance(event, JobFailed):
                    raise RuntimeError(f"{pages}-page job failed: {event.error_code} {event.message}")
            seconds = time.perf_counter() - t0
    finally:
        sampler.stop.set()
        sampler.join()
    return SizeRun(
        pages=pages,
        pdf_bytes=len(pdf),
        seconds=seconds,
        ms_per_page=seconds * 1000 / pages,
        first_page_s=first,
        rss_before_mib=before,
        rss_peak_mib={name: kib / 1024 for name, kib in sampler.peak_kib.items()},
        hwm_after_mib={name: tree_kib(tree, "VmHWM") / 1024 for name, tree in pids.items()},
    )


def scanned_document(pages: int) -> bytes:
    """``pages`` image-only pages of 30 lines each, every page its own text (no two pictures alike)."""
    return scanned_pdf(
        [
            lines([f"Page {p} line {i}: scanned text for the OCR engine." for i in range(30)])
            for p in range(1, pages + 1)
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, nargs="+", default=[250, 500, 1000], help="sizes (250 500 1000)")
    parser.add_argument("--state-dir", default=".dev")
    parser.add_argument("--no-dev-up", action="store_true", help="do not run dev up; use the stack as it is")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--scanned",
        action="store_true",
        help="image-only pages instead (30 lines of text as a 150 dpi picture), read by rapidocr: ~2.5 s a page"
        " on 2 cores, so give small sizes (--pages 5 20)",
    )
    args = parser.parse_args(argv)

    state_dir = Path(args.state_dir)
    if not args.no_dev_up:
        devstack.dev_up(state_dir)
    settings = ClientSettings.from_variables(devstack.dev_env(state_dir))
    pids = {role: pid for role in ROLES if (pid := dev_pid(state_dir, role)) is not None}
    if "worker" not in pids:
        print("no worker pid in .dev/state.json: its memory cannot be read", file=sys.stderr)
    runs = []
    for pages in args.pages:
        pdf = scanned_document(pages) if args.scanned else long_text_pdf(pages)
        runs.append(asyncio.run(run_one(settings, pdf, pages, pids)))
        if not args.json:
            r = runs[-1]
            print(
                f"{r.pages:5d} pages  {r.seconds:7.2f} s  {r.ms_per_page:6.2f} ms/page  "
                f"{r.pages / r.seconds:6.1f} pages/s  first page {r.first_page_s:.3f} s  "
                + "  ".join(
                    f"{n}: rss {r.rss_before_mib[n]:.0f}->{r.rss_peak_mib[n]:.0f} MiB (hwm {r.hwm_after_mib[n]:.0f})"
                    for n in r.rss_peak_mib
                ),
                flush=True,
            )
    if args.json:
        print(json.dumps({"runs": [asdict(r) for r in runs]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
