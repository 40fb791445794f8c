"""``pagewire bench --engine sim``: the batched GPU pipeline, through the stack and bare, on a simulated device.

No GPU here, and what a GPU computes does not decide whether it is kept busy:
the CPUs that render pages ahead of it do. The simulated device (engine ``sim``)
takes a fixed time a batch and a time a page, and reads nothing. The stack runs
workers with it (``PAGEWIRE_GPU_BATCH_PAGES`` pages a batch, rendered ahead by
``PAGEWIRE_RENDER_PROCESSES`` processes); the bare loop runs the same render pool
and device in one process tree, with no broker, S3 or database, on the same
pages cut into the same tasks. ``device_busy`` is the share of the wall time the
device was reading: the worker's ``pagewire_device_busy_seconds_total`` over the
run, and the bare reader's own count.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from consumer.batches import BatchReader, render_pool
from consumer.child import child_setup
from consumer.planner import cut
from consumer.sandbox import Sandbox
from schemas.messages import Engine, JobOptions
from schemas.settings import WorkerSettings
from tools.samples import concat, single_page

SIM_BATCH_PAGES = 16
SIM_RENDER_PROCESSES = 2
SIM_BATCH_MS = 100.0
SIM_PAGE_MS = 90.0
"""The device's speed: 740 ms a batch of 16, some 22 pages a second. Two render processes on this
2-core machine render the corpus's scans at about 30 pages a second, so they can keep ahead of it;
a faster device would measure this machine's CPUs, not the pipeline."""
SIM_TASK_BATCHES = 4
"""Batches a task: the device idles while a task's first batch renders, so a task holds several."""
SIM_DOCUMENT_PAGES = 64
"""The benchmark's documents: scans of the corpus put together into jobs of this many pages. A job of
three pages is three pages a batch, and a device paid by the batch reads those at a fraction of its speed."""


def sim_env(batch_pages: int = SIM_BATCH_PAGES, render_processes: int = SIM_RENDER_PROCESSES) -> dict[str, str]:
    """The variables the stack's planner and workers run with for the simulated device."""
    return {
        "PAGEWIRE_ENGINE": "sim",
        "PAGEWIRE_GPU_BATCH_PAGES": str(batch_pages),
        "PAGEWIRE_RENDER_PROCESSES": str(render_processes),
        "PAGEWIRE_OCR_PAGES_PER_TASK": str(SIM_TASK_BATCHES * batch_pages),
        "PAGEWIRE_SIM_BATCH_MS": str(SIM_BATCH_MS),
        "PAGEWIRE_SIM_PAGE_MS": str(SIM_PAGE_MS),
    }


@dataclass
class SimStats:
    """The batched pipeline through the stack and bare, side by side."""

    pages: int
    batch_pages: int
    render_processes: int
    sim_batch_ms: float
    sim_page_ms: float
    stack_pages_per_s: float | None
    bare_pages_per_s: float | None
    ratio: float | None
    """Stack over bare: 1.0 means the broker, S3 and database cost the device nothing."""
    device_busy: float | None
    """Share of the stack run's wall time the device was reading."""
    bare_device_busy: float | None


def documents(pages: Sequence[tuple[str, int]], per_document: int, folder: str) -> list[tuple[str, int, int]]:
    """``pages`` (a file and a page number each) put together into PDFs of ``per_document`` pages in ``folder``."""

    out = []
    for n, start in enumerate(range(0, len(pages), per_document)):
        chunk = pages[start : start + per_document]
        path = f"{folder}/scans-{n + 1}.pdf"
        with open(path, "wb") as file:
            file.write(concat(*(single_page(Path(p), page_no) for p, page_no in chunk)))
        out.append((path, 1, len(chunk)))
    return out


def task_cuts(ranges: Sequence[tuple[str, int, int]], task_pages: int) -> list[tuple[str, list[int]]]:
    """The pages of ``ranges`` in the tasks the planner cuts them into: the bare loop drains between tasks too."""
    return [(path, list(range(a, b + 1))) for path, first, last in ranges for a, b in cut(first, last, task_pages)]


async def bare_batched(
    ranges: Sequence[tuple[str, int, int]], options: JobOptions, worker: WorkerSettings, task_pages: int
) -> tuple[int, float, float]:
    """Pages read, wall seconds and device seconds of the pipeline alone (sandboxes started before the clock)."""
    device = Sandbox(
        "bench-device",
        memory_mb=worker.page_memory_mb,
        setup=child_setup,
        setup_args=(worker.ocr_threads, Engine.SIM, None, (worker.sim_batch_ms, worker.sim_page_ms)),
    )
    renderers = render_pool(worker.render_processes, worker.page_memory_mb, "bench-render")
    try:
        await asyncio.gather(device.start(), *(r.start() for r in renderers))
        reader = BatchReader.for_worker(device, renderers, worker)
        pages = 0
        started = time.perf_counter()
        for path, page_nos in task_cuts(ranges, task_pages):
            async for batch in reader.read(path, page_nos, options):
                pages += len(batch)
        return pages, time.perf_counter() - started, reader.busy_s
    finally:
        device.close()
        for renderer in renderers:
            renderer.close()


_BUSY = re.compile(r"^pagewire_device_busy_seconds_total\s+(\S+)$", re.M)


def device_busy_s(metrics_port: int) -> float:
    """The worker's device seconds so far, from its metrics endpoint on loopback."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        found = _BUSY.search(response.read().decode())
    return float(found.group(1)) if found else 0.0
