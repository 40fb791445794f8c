"""``pagewire bench``: how fast is the whole stack, next to the bare engine loop it wraps.

Three measurements, each a plain function so scripts and tests can call them:

* :func:`bare_loop`: the pages read in one process with nothing around them:
  :class:`~consumer.pdf.PdfDocument` and :func:`tools.engine_loop.read_page`
  with the same :class:`~consumer.reading.Engines` the worker builds (same
  engine, threads, DPI and pages). No broker, no S3, no database. This is the
  ceiling the stack is compared with.
* :func:`stack_run`: the same pages through the running stack with
  :class:`producer.api.Client`: subscribe, submit every job, collect events
  until each job's ``JobCompleted``, then read the jobs' rows. Per-stage times
  come from the events (``duration_ms``, ``render_ms``, ``occurred_at``) and
  from what this process observes (upload, event arrival).
* :func:`recorder_throughput`: the recorder's batch path (each batch prepared
  while the one before it is in its transaction) driven with synthetic
  ``PageCompleted`` events into a scratch job, in batches of the recorder's
  batch size, from events and from message bodies, and, for comparison, one
  event per transaction.

The born-digital pages run twice: the corpus's text ranges, one job each (most
of a page or a few), and one generated document of ``--long-pages`` pages as one
job, so the cost a job carries and the cost a page carries can be told apart.
:func:`first_event_latency` adds the time from ``submit`` to the first page
event of a small born-digital PDF on an idle stack.

Everything here measures; nothing asserts a speed. The figures of this
machine and how they were taken are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from consumer.pdf import PdfDocument, inspect_pdf
from consumer.planner import cut, task_size
from consumer.reading import Engines
from schemas.messages import (
    Block,
    Engine,
    Event,
    JobCompleted,
    JobFailed,
    JobOptions,
    JobStarted,
    PageCompleted,
    PageFailed,
    Source,
    page_fraction,
    parse_event,
)
from schemas.names import HEADER_JOB_ID
from schemas.settings import ClientSettings, PlannerSettings, RecorderSettings, WorkerSettings
from tools.engine_loop import read_page
from tools.samples import long_text_pdf, single_page

if TYPE_CHECKING:
    from producer.api import Subscription

__all__ = [
    "BareStats",
    "BenchReport",
    "LatencyStats",
    "PageRange",
    "RecorderStats",
    "StackStats",
    "Stage",
    "TargetCheck",
    "add_parser",
    "bare_loop",
    "check_targets",
    "first_event_latency",
    "job_events",
    "recorder_throughput",
    "run",
    "select_corpus",
    "stack_run",
    "summarize",
]

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
"""``../shared/corpus`` next to the repository, where the team keeps its test and benchmark PDFs."""

# The speed targets on a 2-core machine (docs/benchmarks.md).
TARGET_OCR_RATIO = 0.95
TARGET_TEXT_PAGES_PER_S = 200.0
TARGET_RECORDER_EVENTS_PER_S = 5000.0
TARGET_FIRST_EVENT_S = 0.5

# Submits in flight at once: enough to overlap S3 uploads with confirms, few
# enough that the bench process does not compete with the roles for 2 cores.
SUBMIT_CONCURRENCY = 4


# --------------------------------------------------------------------------- pure statistics


@dataclass(frozen=True)
class Stage:
    """Timings of one stage in milliseconds: how many, and their distribution."""

    name: str
    where: str
    count: int
    total_ms: float
    mean_ms: float
    p50_ms: float
    p95_ms: float
    max_ms: float


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(name: str, where: str, values_ms: Sequence[float]) -> Stage:
    """A :class:`Stage` from raw per-item timings in milliseconds."""
    values = [float(v) for v in values_ms]
    total = sum(values)
    return Stage(
        name=name,
        where=where,
        count=len(values),
        total_ms=total,
        mean_ms=total / len(values) if values else 0.0,
        p50_ms=percentile(values, 0.5),
        p95_ms=percentile(values, 0.95),
        max_ms=max(values) if values else 0.0,
    )


def rate(count: int, seconds: float) -> float:
    """``count`` per second (0.0 when no time passed)."""
    return count / seconds if seconds > 0 else 0.0


# --------------------------------------------------------------------------- the workload


@dataclass(frozen=True)
class PageRange:
    """Pages ``first..last`` (1-based, inclusive) of one PDF file."""

    path: Path
    first: int
    last: int

    @property
    def pages(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class Workload:
    """What one bench run reads: born-digital pages (the text layer) and pages that need OCR."""

    text: list[PageRange]
    ocr: list[PageRange]


def _runs(flags: Sequence[bool], wanted: bool) -> list[tuple[int, int]]:
    """Maximal 1-based runs of pages whose flag equals ``wanted``."""
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for i, flag in enumerate([*flags, not wanted], start=1):
        if flag == wanted and start is None:
            start = i
        elif flag != wanted and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs


def _take(ranges: Sequence[PageRange], cap: int, *, repeat: bool) -> list[PageRange]:
    """Ranges in order until ``cap`` pages, cutting the last; with ``repeat``, cycle to reach it."""
    out: list[PageRange] = []
    left = cap
    while left > 0 and ranges:
        for r in ranges:
            if left <= 0:
                break
            last = min(r.last, r.first + left - 1)
            out.append(PageRange(r.path, r.first, last))
            left -= last - r.first + 1
        if not repeat:
            break
    return out


def corpus_files(corpus: Path) -> list[Path]:
    """The corpus's PDFs in manifest order (every ``*.pdf`` under it when there is no manifest)."""
    manifest = corpus / "manifest.json"
    if manifest.exists():
        entries = json.loads(manifest.read_text())
        # Scans first, so a small OCR cap takes real scanned text pages, not the corpus's one photo.
        entries.sort(key=lambda entry: entry.get("class") != "scanned")
        return [corpus / entry["file"] for entry in entries]
    return sorted(corpus.rglob("*.pdf"))


def select_corpus(files: Sequence[Path], *, text_pages: int, ocr_pages: int) -> Workload:
    """Split ``files`` into born-digital and OCR page ranges, by the same judge ``auto`` uses.

    Each page is classified with :func:`~consumer.pdf.inspect_pdf` (the same
    page judge the worker applies in ``auto`` mode), so a text range never reaches OCR
    and an OCR range always does. Born-digital ranges are repeated (as more
    jobs) until ``text_pages``; OCR ranges are capped at ``ocr_pages`` (each
    costs seconds on a CPU) and not repeated.
    """
    text: list[PageRange] = []
    ocr: list[PageRange] = []
    for path in files:
        info = inspect_pdf(path.read_bytes(), max_pages=100_000)
        text += [PageRange(path, a, b) for a, b in _runs(info.text_pages, True)]
        ocr += [PageRange(path, a, b) for a, b in _runs(info.text_pages, False)]
    return Workload(text=_take(text, text_pages, repeat=True), ocr=_take(ocr, ocr_pages, repeat=False))


# --------------------------------------------------------------------------- the bare loop


@dataclass
class BareStats:
    """The bare engine loop over a set of pages."""

    pages: int
    wall_s: float
    pages_per_s: float
    cpu_s: float
    """CPU time of this process over the loop (all its threads) and of the children it waited for (tesseract)."""
    engines: dict[str, int]
    stages: list[Stage]


def worker_engines(settings: WorkerSettings) -> Engines:
    """The :class:`Engines` a worker with ``settings`` builds (same threads, default engine, models)."""
    return Engines(
        threads=settings.ocr_threads,
        default=settings.engine,
        model_dir=settings.nemotron_ocr_model_dir,
        alphabet=settings.ocr_alphabet,
    )


@dataclass
class _Timings:
    """What a bare loop measured, stage by stage, before it is summarized (it crosses processes)."""

    open_ms: list[float] = field(default_factory=list)
    text_ms: list[float] = field(default_factory=list)
    render_ms: list[float] = field(default_factory=list)
    ocr_ms: list[float] = field(default_factory=list)
    used: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0

    def add(self, other: _Timings) -> None:
        self.open_ms += other.open_ms
        self.text_ms += other.text_ms
        self.render_ms += other.render_ms
        self.ocr_ms += other.ocr_ms
        for engine, count in other.used.items():
            self.used[engine] = self.used.get(engine, 0) + count
        self.cpu_s += other.cpu_s

    def stats(self, pages: int, wall: float) -> BareStats:
        stages = [summarize("open", "PdfDocument per range", self.open_ms)]
        if self.text_ms:
            stages.append(summarize("text layer", "read_page, engine text", self.text_ms))
        if self.render_ms:
            stages += [summarize("render", "pdfium", self.render_ms), summarize("OCR", "engine.read", self.ocr_ms)]
        return BareStats(
            pages=pages, wall_s=wall, pages_per_s=rate(pages, wall), cpu_s=self.cpu_s, engines=self.used, stages=stages
        )


def _read_ranges(ranges: Sequence[PageRange], options: JobOptions, engines: Engines, max_megapixels: float) -> _Timings:
    """Read every page of ``ranges`` here, one at a time, opening each range's document as a task does."""
    timings = _Timings()
    cpu0 = process_and_children_cpu_s()
    for r in ranges:
        t0 = time.perf_counter()
        with PdfDocument(r.path) as doc:
            timings.open_ms.append((time.perf_counter() - t0) * 1000)
            for page_no in range(r.first, r.last + 1):
                t1 = time.perf_counter()
                _, _, _, engine, render = read_page(doc, page_no, options, engines, max_megapixels)
                total = (time.perf_counter() - t1) * 1000
                timings.used[str(engine)] = timings.used.get(str(engine), 0) + 1
                if engine == Engine.TEXT:
                    timings.text_ms.append(total)
                else:
                    timings.render_ms.append(render)
                    timings.ocr_ms.append(total - render)
    timings.cpu_s = process_and_children_cpu_s() - cpu0
    return timings


def process_and_children_cpu_s() -> float:
    """CPU seconds of this process (all threads) and of its ended children: an engine that runs a
    process a page (tesseract) is charged for it."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def bare_loop(
    ranges: Sequence[PageRange], options: JobOptions, engines: Engines, *, max_megapixels: float = 50.0
) -> BareStats:
    """Read every page of ``ranges`` in this process, one at a time, as a worker would; blocking.

    Engine start-up is not timed (a worker loads its models before it takes
    work): the engine ``options`` may need is made before the clock starts.
    Opening each document is timed, as the worker opens one per task.
    """
    if options.engine != Engine.TEXT:
        engines.get(options.engine)
    started = time.perf_counter()
    timings = _read_ranges(ranges, options, engines, max_megapixels)
    wall = time.perf_counter() - started
    return timings.stats(sum(r.pages for r in ranges), wall)


def bare_task_size(engine: Engine, ocr: bool, planner: PlannerSettings, worker: WorkerSettings) -> int:
    """Pages a task of the stack holds, for jobs of ``engine`` over pages that need OCR (``ocr``) or not:
    the planner's cut, and in ``auto`` mode the worker's, which hands OCR pages on in tasks of their own."""
    size = task_size(engine, text_per_task=planner.text_pages_per_task, ocr_per_task=planner.ocr_pages_per_task)
    return min(size, worker.ocr_pages_per_task) if ocr and engine == Engine.AUTO else size


def task_ranges(ranges: Sequence[PageRange], size: int) -> list[PageRange]:
    """``ranges`` (a job each) cut into tasks of ``size`` pages at most."""
    return [PageRange(r.path, a, b) for r in ranges for a, b in cut(r.first, r.last, size)]


_child_engines: Engines | None = None
_child_ready: Any = None


def _bare_child_setup(settings: WorkerSettings, engine: Engine, ready: Any) -> None:
    """In a bare-loop process: the engines a worker with ``settings`` makes, loaded before any clock runs."""
    global _child_engines, _child_ready
    _child_engines = worker_engines(settings)
    if engine != Engine.TEXT:
        _child_engines.get(engine)
    _child_ready = ready


def _bare_child_wait() -> None:
    """Return once every process of the pool has set up (each holds one of these calls until then)."""
    _child_ready.wait(timeout=300)


def _bare_child_read(task: PageRange, options: JobOptions, max_megapixels: float) -> _Timings:
    assert _child_engines is not None, "_bare_child_setup did not run"
    return _read_ranges([task], options, _child_engines, max_megapixels)


def bare_loops(
    ranges: Sequence[PageRange], options: JobOptions, settings: WorkerSettings, processes: int, per_task: int
) -> BareStats:
    """The bare loop as ``processes`` workers run it: the pages cut into tasks of ``per_task`` pages
    (:func:`bare_task_size`), each task read whole by the next process free, each process with a
    worker's engines (``settings``' OCR threads); blocking. One worker's loop is :func:`bare_loop`,
    which runs in this process.

    The processes start and load their engines before the clock does, as workers do before they
    take work. CPU time is theirs, added up.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    tasks = task_ranges(ranges, per_task)
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(processes)
    with ProcessPoolExecutor(
        processes, mp_context=context, initializer=_bare_child_setup, initargs=(settings, options.engine, ready)
    ) as pool:
        for waiting in [pool.submit(_bare_child_wait) for _ in range(processes)]:
            waiting.result()
        started = time.perf_counter()
        reads = [pool.submit(_bare_child_read, task, options, settings.max_megapixels) for task in tasks]
        timings = _Timings()
        for read in reads:
            timings.add(read.result())
        wall = time.perf_counter() - started
    return timings.stats(sum(r.pages for r in ranges), wall)


# --------------------------------------------------------------------------- the whole stack


@dataclass
class StackStats:
    """Pages through the running stack, submit to each job's ``JobCompleted``."""

    jobs: int
    pages: int
    pages_ok: int
    pages_failed: int
    rows_completed: int
    wall_s: float
    pages_per_s: float
    first_event_s: float
    """From the first submit to the first page event, this run (jobs queue behind each other)."""
    worker_busy_share: float
    """Sum of the pages' ``duration_ms`` over the wall time: how much of the run the worker spent reading."""
    cpu_s: dict[str, float]
    """CPU seconds used during the run: by each role whose pid is known, by this process (``bench``), by the
    whole machine (``machine``, all processes) and what the machine had (``capacity``: wall x cores)."""
    loadavg: tuple[float, float]
    """The machine's 1-minute load average before and after: others' work on the 2 cores shows here."""
    engines: dict[str, int]
    stages: list[Stage]
    statuses: dict[str, int]


@dataclass
class _Job:
    range: PageRange
    job_id: str = ""
    submit_start: float = 0.0
    submit_end: float = 0.0
    events: list[tuple[float, Event]] = field(default_factory=list)
    """(time.time() on arrival, event)."""
    bodies: list[tuple[float, bytes]] = field(default_factory=list)
    """(time.time() on arrival, body): the events as received, parsed into :attr:`events` after the run."""


_PAGE_EVENTS = frozenset({PageCompleted.__name__, PageFailed.__name__})


def _epoch(moment: datetime) -> float:
    return moment.timestamp()


def stack_stages(jobs: Sequence[_Job], download_ms: Sequence[float]) -> tuple[list[Stage], dict[str, int], float]:
    """Per-stage timings from the jobs' events; also engine counts and the sum of ``duration_ms`` (pure)."""
    upload: list[float] = []
    render: list[float] = []
    ocr: list[float] = []
    text: list[float] = []
    publish: list[float] = []
    record: list[float] = []
    plan: list[float] = []
    engines: dict[str, int] = {}
    busy_ms = 0.0
    for job in jobs:
        upload.append((job.submit_end - job.submit_start) * 1000)
        last_page_at: float | None = None
        for received, event in job.events:
            if isinstance(event, JobStarted):
                plan.append((received - job.submit_end) * 1000)
            elif isinstance(event, PageCompleted):
                engines[str(event.engine)] = engines.get(str(event.engine), 0) + 1
                busy_ms += event.duration_ms
                if event.engine == Engine.TEXT:
                    text.append(event.duration_ms)
                else:
                    render.append(event.render_ms)
                    ocr.append(event.duration_ms - event.render_ms)
                # Worker's clock and ours are the same machine's: arrival minus creation is
                # the confirmed publish, the fanout and the delivery to a subscriber.
                publish.append(max(0.0, (received - _epoch(event.occurred_at)) * 1000))
                last_page_at = received
            elif isinstance(event, PageFailed):
                last_page_at = received
            elif isinstance(event, JobCompleted) and last_page_at is not None:
                record.append((received - last_page_at) * 1000)
    stages = [
        summarize("upload", "submit: S3 put + confirmed JobRequest", upload),
        summarize("plan", "submit done -> JobStarted seen", plan),
        summarize("download", "S3 get of each source (timed by bench)", download_ms),
    ]
    if text:
        stages.append(summarize("text layer", "worker: duration_ms, engine text", text))
    if render:
        stages += [
            summarize("render", "worker: render_ms", render),
            summarize("OCR", "worker: duration_ms - render_ms", ocr),
        ]
    stages += [
        summarize("publish", "PageCompleted occurred_at -> seen by a subscriber", publish),
        summarize("record", "last page event -> JobCompleted seen", record),
    ]
    return stages, engines, busy_ms


async def job_events(events: Subscription, job_ids: set[str]) -> AsyncIterator[Event]:
    """Events of ``job_ids`` until each has a terminal event, closing the subscription's iterator on the way out.

    ``Subscription.for_jobs`` returns from inside its own ``async for``, which
    leaves the inner generator to the garbage collector; it is then closed after
    the channel, and asyncio logs a ``ChannelClosed`` nobody retrieves. Holding
    the iterator and closing it here closes it while the channel is still open.
    """
    from schemas.messages import TERMINAL_EVENTS

    open_jobs = set(job_ids)
    # Subscription.__aiter__ is an async generator, typed as a plain iterator.
    stream = cast("AsyncGenerator[Event, None]", events.__aiter__())
    try:
        async for event in stream:
            if event.job_id not in job_ids:
                continue
            yield event
            if isinstance(event, TERMINAL_EVENTS):
                open_jobs.discard(event.job_id)
                if not open_jobs:
                    return
    finally:
        await stream.aclose()


async def _page_rows(client: Any, job_ids: Sequence[str]) -> dict[str, int]:
    """Page rows of the jobs by status, as the recorder committed them."""
    from sqlalchemy import func, select

    from schemas.tables import pages

    query = select(pages.c.status, func.count()).where(pages.c.job_id.in_(list(job_ids))).group_by(pages.c.status)
    async with client.db.connect() as conn:
        return {str(status): int(n) for status, n in (await conn.execute(query)).all()}


def process_cpu_s(pid: int | None) -> float | None:
    """User plus system CPU seconds of ``pid`` and of its children it has waited for, from ``/proc``
    (None when unknown): a worker's tesseract processes are its own cost."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name; utime, stime, cutime and cstime are the 12th to 15th.
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float | None:
    """CPU seconds all cores spent busy since boot, from ``/proc/stat`` (None where unreadable)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(f) for f in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    # guest time is already counted in user and nice: leave it out of the sum.
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# The stack's shared services, found by their command lines: their CPU is part of what a page costs.
SERVICE_MARKERS = {"rabbitmq": "beam.smp", "postgresql": "postgres", "seaweedfs": "weed"}


def service_pids() -> dict[str, list[int]]:
    """Pids of RabbitMQ, PostgreSQL (every backend) and SeaweedFS, from ``/proc``."""
    found: dict[str, list[int]] = {name: [] for name in SERVICE_MARKERS}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        for name, marker in SERVICE_MARKERS.items():
            if marker in Path(argv0).name or argv0.startswith(marker):
                found[name].append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a role's sandbox child), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_snapshot(pids: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    """CPU seconds so far, by group: each named role (its processes, ``worker`` all the workers) with
    their sandbox children, the services, this process and the machine."""
    snap: dict[str, dict[int, float]] = {}
    groups: dict[str, list[int]] = {
        name: [p for pid in members for p in descendants(pid)] for name, members in pids.items()
    } | service_pids()
    for name, members in groups.items():
        snap[name] = {pid: cpu for pid in members if (cpu := process_cpu_s(pid)) is not None}
    snap["bench"] = {os.getpid(): time.process_time()}
    busy = machine_busy_s()
    if busy is not None:
        snap["machine"] = {0: busy}
    return snap


def cpu_delta(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU seconds each group used between two snapshots (pure).

    A process born in between (a new PostgreSQL backend) counts from zero; one
    that ended is lost. ``other`` is the machine's busy time that no group
    explains: the kernel, other work on this machine.
    """
    used = {
        name: sum(cpu - before.get(name, {}).get(pid, 0.0) for pid, cpu in members.items())
        for name, members in after.items()
    }
    if "machine" in used:
        used["other"] = used["machine"] - sum(v for k, v in used.items() if k != "machine")
    return used


def loadavg() -> float:
    """The 1-minute load average (0.0 where unknown)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def unique_copy(pdf: bytes) -> bytes:
    """``pdf`` with a comment after its end, so its sha256 is new and the page cache cannot answer it.

    The bench repeats corpus files to reach its page count, and runs again and
    again on one stack: without this, every page after the first run of a file
    would come from the planner's page cache instead of a worker.
    """
    return pdf + f"\n% pagewire bench {uuid.uuid4().hex}\n".encode()


async def stack_run(
    settings: ClientSettings,
    ranges: Sequence[PageRange],
    options: JobOptions,
    *,
    timeout_s: float = 600.0,
    role_pids: dict[str, list[int]] | None = None,
    warmup: bytes | None = None,
) -> StackStats:
    """Submit one job per range to the running stack and follow them to their ``JobCompleted``.

    With ``warmup`` (a small PDF), one job of it goes through first, on the same
    client, and is not counted: the client's first S3 and broker calls, and each
    role's first job after a start, cost a one-time setup (some 0.6 s on the
    first submit alone) that is no part of a page's cost in a running service.
    Subscribes before the first submit so no event is missed; submits up to
    :data:`SUBMIT_CONCURRENCY` at a time; the wall time runs from the first
    submit to the last ``JobCompleted`` this process sees. The sources are then
    fetched once from S3, as a worker fetches each into its cache, to time
    the download stage without racing the worker for the cores.
    """
    from producer.api import Client

    async with Client(settings) as client:
        if warmup is not None:
            await warm_up(client, warmup)
        return await _stack_run(client, settings, ranges, options, timeout_s, role_pids)


async def warm_up(client: Any, pdf: bytes) -> None:
    """One job of ``pdf`` through the stack, followed to its end: the setup each part does once."""
    job_id = f"bench-warmup-{uuid.uuid4().hex[:12]}"
    async with client.subscribe() as events:
        await client.submit(unique_copy(pdf), job_id=job_id, submitted_by="pagewire bench (warm-up)")
        async for _ in job_events(events, {job_id}):
            pass


async def _stack_run(
    client: Any,
    settings: ClientSettings,
    ranges: Sequence[PageRange],
    options: JobOptions,
    timeout_s: float,
    role_pids: dict[str, list[int]] | None,
) -> StackStats:
    jobs = [_Job(r) for r in ranges]
    by_id: dict[str, _Job] = {}
    for job in jobs:
        job.job_id = f"bench-{uuid.uuid4().hex[:12]}"
        by_id[job.job_id] = job
    blobs = {r.path: r.path.read_bytes() for r in ranges}
    async with client.subscribe() as events:
        first_page_at: float | None = None
        end_at = 0.0
        failed: list[str] = []

        async def collect() -> None:
            # Bodies are kept and parsed after the run: this process shares the cores with the
            # roles it measures, and needs no more than each event's headers to follow the jobs.
            from schemas.messages import TERMINAL_EVENTS

            nonlocal first_page_at, end_at
            job_ends = {t.__name__ for t in TERMINAL_EVENTS}
            open_jobs = set(by_id)
            stream = cast("AsyncGenerator[Any, None]", events.messages())
            try:
                async for message in stream:
                    job = by_id.get((message.headers or {}).get(HEADER_JOB_ID, ""))
                    if job is None:
                        continue
                    now = time.time()
                    job.bodies.append((now, message.body))
                    if first_page_at is None and message.type in _PAGE_EVENTS:
                        first_page_at = now
                    if message.type in job_ends:
                        end_at = now
                        if message.type != JobCompleted.__name__:
                            ended = parse_event(message.body, settings.max_message_bytes)
                            if isinstance(ended, JobFailed):
                                failed.append(f"{job.job_id}: {ended.error_code} {ended.message}")
                            else:
                                failed.append(f"{job.job_id}: {ended.type}")
                        open_jobs.discard(job.job_id)
                        if not open_jobs:
                            return
            finally:
                await stream.aclose()

        collector = asyncio.create_task(collect())
        gate = asyncio.Semaphore(SUBMIT_CONCURRENCY)

        async def submit(job: _Job) -> None:
            async with gate:
                job.submit_start = time.time()
                r = job.range
                await client.submit(
                    unique_copy(blobs[r.path]),
                    options=options.model_copy(update={"first_page": r.first, "last_page": r.last}),
                    job_id=job.job_id,
                    submitted_by="pagewire bench",
                )
                job.submit_end = time.time()

        load0, cpu0 = loadavg(), cpu_snapshot(role_pids or {})
        begin = time.time()
        await asyncio.gather(*(submit(job) for job in jobs))
        await asyncio.wait_for(collector, timeout_s)
        cpu1, load1 = cpu_snapshot(role_pids or {}), loadavg()
        for job in jobs:
            job.events = [(at, parse_event(body, settings.max_message_bytes)) for at, body in job.bodies]
        rows = await _page_rows(client, list(by_id))
        finals = [await client.final_status(job_id) for job_id in by_id]
        download_ms: list[float] = []
        for job in jobs:
            t0 = time.perf_counter()
            await asyncio.to_thread(client.storage.get_bytes, settings.s3_bucket, f"jobs/{job.job_id}/source.pdf")
            download_ms.append((time.perf_counter() - t0) * 1000)
    if failed:
        raise RuntimeError("bench jobs failed: " + "; ".join(failed))
    stages, engines, busy_ms = stack_stages(jobs, download_ms)
    wall = end_at - begin
    pages = sum(r.pages for r in ranges)
    statuses: dict[str, int] = {}
    for row in finals:
        statuses[str(row["status"])] = statuses.get(str(row["status"]), 0) + 1
    return StackStats(
        jobs=len(jobs),
        pages=pages,
        pages_ok=sum(int(row["pages_ok"] or 0) for row in finals),
        pages_failed=sum(int(row["pages_failed"] or 0) for row in finals),
        rows_completed=rows.get("completed", 0),
        wall_s=wall,
        pages_per_s=rate(pages, wall),
        first_event_s=(first_page_at - begin) if first_page_at is not None else float("nan"),
        worker_busy_share=busy_ms / 1000 / wall if wall > 0 else 0.0,
        cpu_s=cpu_delta(cpu0, cpu1) | {"capacity": wall * len(os.sched_getaffinity(0))},
        loadavg=(load0, load1),
        engines=engines,
        stages=stages,
        statuses=statuses,
    )


@dataclass
class LatencyStats:
    """Submit to first page event of one small born-digital PDF on an otherwise idle stack."""

    runs: int
    pages: int
    submit_ms: Stage
    to_job_started_ms: Stage
    to_first_page_ms: Stage
    to_completed_ms: Stage


async def first_event_latency(settings: ClientSettings, pdf: bytes, *, runs: int = 5) -> LatencyStats:
    """Submit ``pdf`` ``runs`` times, one after another, timing each from the ``submit`` call."""
    from producer.api import Client

    submit: list[float] = []
    started: list[float] = []
    first: list[float] = []
    completed: list[float] = []
    pages = 0
    async with Client(settings) as client:
        for _ in range(runs):
            # A subscription per run: its queue is auto-deleted when its consumer stops.
            async with client.subscribe() as events:
                t0 = time.perf_counter()
                request = await client.submit(
                    unique_copy(pdf), options=JobOptions(engine=Engine.AUTO), submitted_by="pagewire bench"
                )
                submit.append((time.perf_counter() - t0) * 1000)
                seen_first = False
                async for event in job_events(events, {request.job_id}):
                    elapsed = (time.perf_counter() - t0) * 1000
                    if isinstance(event, JobStarted):
                        started.append(elapsed)
                        pages = event.total_pages
                    elif isinstance(event, PageCompleted | PageFailed) and not seen_first:
                        first.append(elapsed)
                        seen_first = True
                    elif isinstance(event, JobCompleted):
                        completed.append(elapsed)
                    elif isinstance(event, JobFailed):
                        raise RuntimeError(f"latency probe failed: {event.error_code} {event.message}")
    return LatencyStats(
        runs=runs,
        pages=pages,
        submit_ms=summarize("submit", "S3 put + confirmed JobRequest", submit),
        to_job_started_ms=summarize("JobStarted", "submit call -> JobStarted seen", started),
        to_first_page_ms=summarize("first page", "submit call -> first page event seen", first),
        to_completed_ms=summarize("JobCompleted", "submit call -> JobCompleted seen", completed),
    )


# --------------------------------------------------------------------------- the recorder


@dataclass
class RecorderStats:
    """The recorder's batches into PostgreSQL: from events, from message bodies, and one event per transaction."""

    events: int
    batch_size: int
    batched_s: float
    batched_events_per_s: float
    single_events: int
    single_s: float
    single_events_per_s: float
    text_chars: int
    blocks_per_page: int
    # The same batches from JSON message bodies, parsing included (0 events: not measured).
    bodies_events: int = 0
    bodies_s: float = math.nan
    bodies_events_per_s: float = math.nan


def box_of(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
    """A box as the worker writes it (:func:`schemas.messages.page_fraction`)."""
    return (page_fraction(x0), page_fraction(y0), page_fraction(x1), page_fraction(y1))


def synthetic_page(job_id: str, page_no: int, *, text_chars: int, blocks: int) -> PageCompleted:
    """A born-digital-like ``PageCompleted``: ``text_chars`` of text in ``blocks`` lines with boxes."""
    line = "pagewire turns PDFs into text at scale; every page goes out as an event. "
    text = (line * (text_chars // len(line) + 1))[:text_chars]
    step = max(1, len(text) // max(1, blocks))
    parts = [text[i : i + step] for i in range(0, len(text), step)][:blocks]
    return PageCompleted(
        job_id=job_id,
        page_no=page_no,
        text=text,
        blocks=[
            Block(text=part, bbox=box_of(0.1, i / (len(parts) + 1), 0.9, (i + 0.8) / (len(parts) + 1)), confidence=1.0)
            for i, part in enumerate(parts)
        ],
        confidence=1.0,
        engine=Engine.TEXT,
        duration_ms=1.0,
        worker="bench",
    )


async def recorder_throughput(
    database_url: str,
    n_events: int,
    *,
    batch_size: int | None = None,
    single_events: int = 500,
    text_chars: int = 1750,
    blocks: int = 60,
    from_bodies: bool = True,
) -> RecorderStats:
    """Apply ``n_events`` synthetic page events the way the recorder applies its batches.

    Into scratch jobs (``bench-recorder-...``) that are deleted afterwards: first in batches of the
    recorder's batch size through :func:`consumer.recorder.pipelined` (each batch prepared while the
    one before it is in its transaction), from events built before the clock starts; then, with
    ``from_bodies``, ``n_events`` more from their JSON message bodies (into a second job), so
    parsing is counted too; then ``single_events`` more with ``apply_batch`` and one transaction
    each, which is what the recorder would do without batching. The broker is not part of these
    figures. The default page (1,750 characters in 60 blocks) is the mean born-digital page of the
    corpus. The jobs name a content hash, as a planned job does, so each page also goes into the
    page cache (removed afterwards too). The tables are vacuumed afterwards: a run leaves some 20,000 dead rows in
    each, and the dev PostgreSQL runs no autovacuum.
    """
    from sqlalchemy import delete, text

    from consumer.recorder import (
        PreparedBatch,
        apply_batch,
        apply_prepared,
        collect_less_often,
        pipelined,
        prepare_bodies,
        prepare_events,
        recorder_engine,
    )
    from schemas.tables import applied_events, jobs, page_cache

    size = batch_size or RecorderSettings().batch_size
    n_bodies = n_events if from_bodies else 0
    # The bodies go into a scratch job of their own: each batch recounts its job's pages, so a job
    # that already held the first run's pages would make the second run (and the single events) slower.
    scratch = job_id, bodies_job_id = tuple(f"bench-recorder-{uuid.uuid4().hex[:12]}" for _ in range(2))
    sha256 = {j: hashlib.sha256(j.encode()).hexdigest() for j in scratch}
    total = n_events + single_events
    starts = [
        JobStarted(
            job_id=j,
            source=Source(bucket="bench", key=f"jobs/{j}/source.pdf", sha256=sha256[j]),
            options=JobOptions(),
            total_pages=total + 1,  # one page more than sent: the scratch job never finishes and never publishes
            first_page=1,
            last_page=total + 1,
            tasks=1,
        )
        for j in scratch
    ]

    def pages(job: str, first: int, count: int) -> list[PageCompleted]:
        return [synthetic_page(job, n, text_chars=text_chars, blocks=blocks) for n in range(first, first + count)]

    batched = pages(job_id, 1, n_events)
    # Bodies only: a recorder keeps no parsed events but its two batches', and with 10,000 more
    # alive (as ``batched`` is) every garbage collection that parsing sets off takes longer.
    bodies = [
        synthetic_page(bodies_job_id, n, text_chars=text_chars, blocks=blocks).model_dump_json().encode()
        for n in range(1, n_bodies + 1)
    ]
    single = pages(job_id, n_events + 1, single_events)
    max_bytes = RecorderSettings().max_message_bytes
    db = recorder_engine(database_url, pool_size=2)

    async def each_batch(items: Sequence[Any]) -> AsyncIterator[Sequence[Any]]:
        for i in range(0, len(items), size):
            yield items[i : i + size]

    async def from_bodies_(batch: Sequence[bytes]) -> PreparedBatch:
        prepared, poison = await prepare_bodies(batch, max_bytes)
        if poison:
            raise RuntimeError(f"bench bodies that are no event: {poison}")
        return prepared

    async def apply(prepared: PreparedBatch) -> None:
        async with db.begin() as conn:
            await apply_prepared(conn, prepared)

    bodies_s = math.nan
    thresholds = collect_less_often()  # as the recorder process does
    try:
        async with db.begin() as conn:
            await apply_batch(conn, starts)
        t0 = time.perf_counter()
        await pipelined(each_batch(batched), prepare_events, apply)
        batched_s = time.perf_counter() - t0
        del batched
        if bodies:
            gc.collect()
            t0 = time.perf_counter()
            await pipelined(each_batch(bodies), from_bodies_, apply)
            bodies_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for event in single:
            async with db.begin() as conn:
                await apply_batch(conn, [event])
        single_s = time.perf_counter() - t0
    finally:
        async with db.begin() as conn:
            await conn.execute(delete(applied_events).where(applied_events.c.job_id.in_(scratch)))
            await conn.execute(delete(jobs).where(jobs.c.job_id.in_(scratch)))  # pages go with them (cascade)
            await conn.execute(delete(page_cache).where(page_cache.c.sha256.in_(sha256.values())))
        async with db.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM pages, applied_events, page_cache, jobs"))
        await db.dispose()
        gc.set_threshold(*thresholds)
    return RecorderStats(
        events=n_events,
        batch_size=size,
        batched_s=batched_s,
        batched_events_per_s=rate(n_events, batched_s),
        single_events=single_events,
        single_s=single_s,
        single_events_per_s=rate(single_events, single_s),
        text_chars=text_chars,
        blocks_per_page=blocks,
        bodies_events=n_bodies,
        bodies_s=bodies_s,
        bodies_events_per_s=rate(n_bodies, bodies_s) if n_bodies else math.nan,
    )


# --------------------------------------------------------------------------- the report


@dataclass
class Phase:
    """One set of pages through both loops."""

    name: str
    options: dict[str, Any]
    files: list[str]
    bare: BareStats | None = None
    stack: StackStats | None = None
    rounds: list[tuple[float | None, float | None]] = field(default_factory=list)
    """With ``--rounds N``: each round's (bare, stack) pages/s, in order; ``bare`` and ``stack`` are
    the round of the median ratio (:func:`median_round`)."""

    @property
    def ratio(self) -> float | None:
        """Stack pages/s over bare pages/s."""
        if self.bare is None or self.stack is None or self.bare.pages_per_s <= 0:
            return None
        return self.stack.pages_per_s / self.bare.pages_per_s


def median_round(rounds: Sequence[tuple[float | None, float | None]]) -> int:
    """The index of the round to report: the median stack/bare ratio, or the median stack (else bare)
    pages/s where a loop was skipped; the lower middle one of an even count (pure)."""
    if not rounds:
        raise ValueError("no rounds")

    def key(i: int) -> float:
        bare, stack = rounds[i]
        if bare and stack is not None:
            return stack / bare
        return stack if stack is not None else (bare or 0.0)

    order = sorted(range(len(rounds)), key=key)
    return order[(len(order) - 1) // 2]


@dataclass(frozen=True)
class TargetCheck:
    """One speed target against what was measured (``met`` is None when not measured)."""

    name: str
    measured: float | None
    goal: str
    met: bool | None


@dataclass
class BenchReport:
    """Everything one ``pagewire bench`` run measured."""

    machine: dict[str, Any]
    phases: list[Phase] = field(default_factory=list)
    latency: LatencyStats | None = None
    recorder: RecorderStats | None = None
    targets: list[TargetCheck] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A plain JSON-able dict (the phases' ratios included)."""
        body = asdict(self)
        for phase, entry in zip(self.phases, body["phases"], strict=True):
            entry["ratio"] = phase.ratio
        finite: dict[str, Any] = _finite(body)
        return finite


def _finite(value: Any) -> Any:
    """JSON has no NaN: None in its place."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def check_targets(report: BenchReport) -> list[TargetCheck]:
    """The speed targets that this report measured (pure)."""
    checks: list[TargetCheck] = []
    phases = {p.name: p for p in report.phases}
    ocr = phases.get("ocr")
    ratio = ocr.ratio if ocr else None
    checks.append(
        TargetCheck(
            "OCR pages: stack / bare loop", ratio, f">= {TARGET_OCR_RATIO}", None if ratio is None else ratio >= 0.95
        )
    )
    for name, label in (("text", "corpus mix, a job per range"), ("long", "one long document")):
        text = phases.get(name)
        text_rate = text.stack.pages_per_s if text and text.stack else None
        if name == "long" and text_rate is None:
            continue
        checks.append(
            TargetCheck(
                f"born-digital pages/s end to end (auto), {label}",
                text_rate,
                f">= {TARGET_TEXT_PAGES_PER_S:.0f}",
                None if text_rate is None else text_rate >= TARGET_TEXT_PAGES_PER_S,
            )
        )
    events = report.recorder.batched_events_per_s if report.recorder else None
    checks.append(
        TargetCheck(
            "recorder page events/s into PostgreSQL",
            events,
            f">= {TARGET_RECORDER_EVENTS_PER_S:.0f}",
            None if events is None else events >= TARGET_RECORDER_EVENTS_PER_S,
        )
    )
    latency = report.latency.to_first_page_ms.p50_ms / 1000 if report.latency else None
    checks.append(
        TargetCheck(
            "submit -> first page event, born-digital (median s)",
            latency,
            f"< {TARGET_FIRST_EVENT_S}",
            None if latency is None else latency < TARGET_FIRST_EVENT_S,
        )
    )
    return checks


def machine_info() -> dict[str, Any]:
    """Where the figures were taken."""
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": sys.version.split()[0],
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:,.{digits}f}"


def render_report(report: BenchReport, console: Any) -> None:
    """Print the report as rich tables on ``console``."""
    from rich.table import Table

    workers = report.machine.get("workers", 1)
    setup = f"{workers} workers, " if workers > 1 else ""
    setup += f"{report.machine.get('ocr_threads', 0) or 'all'} OCR threads each"
    for phase in report.phases:
        title = f"{phase.name} pages ({json.dumps(phase.options)}; {setup})"
        table = Table(title=title, title_justify="left")
        table.add_column("")
        table.add_column("bare loop", justify="right")
        table.add_column("whole stack", justify="right")
        bare, stack = phase.bare, phase.stack
        table.add_row("pages", _fmt(bare.pages if bare else None, 0), _fmt(stack.pages if stack else None, 0))
        table.add_row("jobs", "-", _fmt(stack.jobs if stack else None, 0))
        table.add_row("wall s", _fmt(bare.wall_s if bare else None, 2), _fmt(stack.wall_s if stack else None, 2))
        table.add_row(
            "pages/s", _fmt(bare.pages_per_s if bare else None, 2), _fmt(stack.pages_per_s if stack else None, 2)
        )
        table.add_row("ratio stack/bare", "", _fmt(phase.ratio, 3))
        if len(phase.rounds) > 1:
            table.add_row(
                f"pages/s of each round ({len(phase.rounds)}; shown: the median ratio)",
                ", ".join(_fmt(b, 2) for b, _ in phase.rounds),
                ", ".join(_fmt(s, 2) for _, s in phase.rounds),
            )
        table.add_row(
            "CPU s (bare: its processes; stack: the workers)",
            _fmt(bare.cpu_s if bare else None, 2),
            _fmt(stack.cpu_s.get("worker") if stack else None, 2),
        )
        if stack:
            table.add_row(
                "stack CPU s by process",
                "",
                ", ".join(f"{k} {v:.2f}" for k, v in stack.cpu_s.items()),
            )
        if stack:
            table.add_row("load average before / after", "", "{:.2f} / {:.2f}".format(*stack.loadavg))
            table.add_row("first page event after first submit, s", "", _fmt(stack.first_event_s, 3))
            table.add_row("worker busy share", "", _fmt(stack.worker_busy_share, 3))
            table.add_row("page rows completed", "", f"{stack.rows_completed} of {stack.pages}")
        console.print(table)
        stages = Table(title=f"{phase.name}: per-stage times (ms)", title_justify="left")
        for name in ("loop", "stage", "where", "n", "mean", "p50", "p95", "max", "total s"):
            stages.add_column(name, justify="right" if name not in ("loop", "stage", "where") else "left")
        for label, stats in (("bare", bare), ("stack", stack)):
            for s in stats.stages if stats else []:
                stages.add_row(
                    label,
                    s.name,
                    s.where,
                    str(s.count),
                    _fmt(s.mean_ms, 2),
                    _fmt(s.p50_ms, 2),
                    _fmt(s.p95_ms, 2),
                    _fmt(s.max_ms, 2),
                    _fmt(s.total_ms / 1000, 2),
                )
        console.print(stages)
    if report.latency:
        lat = report.latency
        table = Table(
            title=f"latency: one {lat.pages}-page born-digital PDF, {lat.runs} runs (ms)", title_justify="left"
        )
        for name in ("from the submit call to", "p50", "p95", "max"):
            table.add_column(name, justify="left" if name.startswith("from") else "right")
        for s in (lat.submit_ms, lat.to_job_started_ms, lat.to_first_page_ms, lat.to_completed_ms):
            table.add_row(s.where, _fmt(s.p50_ms), _fmt(s.p95_ms), _fmt(s.max_ms))
        console.print(table)
    if report.recorder:
        rec = report.recorder
        table = Table(
            title=f"recorder apply_batch ({rec.text_chars} chars, {rec.blocks_per_page} blocks per page)",
            title_justify="left",
        )
        for name in ("mode", "events", "s", "events/s"):
            table.add_column(name, justify="left" if name == "mode" else "right")
        table.add_row(
            f"batches of {rec.batch_size}", str(rec.events), _fmt(rec.batched_s, 2), _fmt(rec.batched_events_per_s, 0)
        )
        if rec.bodies_events:
            table.add_row(
                f"batches of {rec.batch_size} from message bodies",
                str(rec.bodies_events),
                _fmt(rec.bodies_s, 2),
                _fmt(rec.bodies_events_per_s, 0),
            )
        table.add_row(
            "one per transaction", str(rec.single_events), _fmt(rec.single_s, 2), _fmt(rec.single_events_per_s, 0)
        )
        console.print(table)
    table = Table(title="targets (2 cores)", title_justify="left")
    for name in ("target", "measured", "goal", "met"):
        table.add_column(name, justify="right" if name in ("measured",) else "left")
    for check in report.targets:
        met = "-" if check.met is None else ("yes" if check.met else "NO")
        table.add_row(check.name, _fmt(check.measured, 3), check.goal, met)
    console.print(table)


# --------------------------------------------------------------------------- the command


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to ``pagewire``'s subcommands; its ``func`` is :func:`run`."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="measure the stack against the bare engine loop",
        description=(
            "Run PDFs through the whole running stack and through the bare engine loop (same engine, DPI, "
            "pages and parallelism, no broker, S3 or database); print pages/s, their ratio and per-stage times."
        ),
    )
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", metavar="FILE", help=f"PDFs to read (default: a mix from {DEFAULT_CORPUS})")
    p.add_argument(
        "--engine",
        choices=["auto", "text", "rapidocr", "tesseract", "sim"],
        default="auto",
        help="the jobs' engine (auto); sim: the batched GPU pipeline on a simulated device, through the stack"
        " (its roles restarted with it, and back) and bare, printed as the 'sim' object",
    )
    p.add_argument(
        "--sim-pages", type=int, default=256, help="with --engine sim: scanned pages to read, in jobs of 64 (256)"
    )
    p.add_argument("--dpi", type=int, default=150, help="render resolution for OCR (150)")
    p.add_argument("--ocr-pages", type=int, default=4, help="at most this many OCR pages (4; ~5 s each on 2 cores)")
    p.add_argument("--text-pages", type=int, default=500, help="born-digital pages, repeating files to reach it (500)")
    p.add_argument(
        "--long-pages",
        type=int,
        default=1000,
        help="pages of one generated born-digital document, a job of its own (1000; 0: none; not with an OCR engine)",
    )
    p.add_argument("--recorder-events", type=int, default=10_000, help="synthetic events for the recorder (10000)")
    p.add_argument("--latency-runs", type=int, default=5, help="submit-to-first-event probes (5)")
    p.add_argument(
        "--rounds",
        type=_positive,
        default=1,
        help="run each phase's stack and bare loop this many times in turn and report the round of the median"
        " ratio, with every round's pages/s (1); for a machine whose speed drifts",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--skip-stack", action="store_true", help="no stack runs (bare loop and recorder only)")
    p.add_argument("--skip-bare", action="store_true", help="no bare loop")
    p.add_argument("--no-dev-up", action="store_true", help="use the stack PAGEWIRE_* points at; do not run dev up")
    p.add_argument("--state-dir", default=".dev", help="the dev stack's state directory (.dev)")
    p.add_argument("--timeout", type=float, default=900.0, help="give up on a stack run after this many seconds")
    p.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="workers in the stack (dev up --workers N) and processes in the bare loop, each with its share"
        " of the cores for OCR (1)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _stack_env(args: argparse.Namespace) -> dict[str, str]:
    """The stack's ``PAGEWIRE_*`` variables: started (idempotently) by dev up unless ``--no-dev-up``."""
    from tools import devstack

    state_dir = Path(args.state_dir)
    if args.no_dev_up:
        return devstack.stack_env(ClientSettings())
    devstack.dev_up(state_dir, workers=args.workers)
    return devstack.dev_env(state_dir)


def dev_pid(state_dir: Path, role: str) -> int | None:
    """The pid of a role ``dev up`` started and that still runs (None otherwise: its CPU and memory go unmeasured)."""
    from tools import devstack

    record = devstack.DevState.load(state_dir).processes.get(role)
    if record is None or record.pid is None or not devstack.pid_alive(record.pid):
        return None
    return record.pid


def _worker_settings(env: dict[str, str], workers: int = 1) -> WorkerSettings:
    """What each dev worker runs with: this process's ``PAGEWIRE_*`` environment overlaid with the
    stack's, and the share of the cores ``dev up`` gives each of ``workers`` for OCR."""
    from tools.devstack import ocr_threads_each

    overrides: dict[str, Any] = {key.removeprefix("PAGEWIRE_").lower(): value for key, value in env.items()}
    if workers > 1 and "PAGEWIRE_OCR_THREADS" not in os.environ:
        overrides["ocr_threads"] = ocr_threads_each(workers)
    return WorkerSettings(**overrides)


def _latency_pdf(workload: Workload) -> bytes:
    """A one-page born-digital PDF: the first text page of the workload, or a generated one.

    One page is one task: the smallest job, so the figure is the pipeline's
    fixed cost (upload, planner, dispatch), not reading.
    """
    from tools.samples import DEMO_TEXT, lines, text_pdf

    if workload.text:
        return single_page(workload.text[0].path, workload.text[0].first)
    return text_pdf([lines(DEMO_TEXT)])


async def _phase(
    args: argparse.Namespace,
    name: str,
    ranges: list[PageRange],
    settings: ClientSettings,
    worker: WorkerSettings,
    engines: Engines,
    role_pids: dict[str, list[int]],
    warmup: bytes,
    note: Callable[[str], None],
) -> Phase:
    """One workload through the stack (one job a range, after a ``warmup`` job) and through the bare loop."""
    engine = Engine(args.engine)
    options = JobOptions(engine=engine, dpi=args.dpi)
    phase = Phase(
        name=name,
        options={"engine": str(engine), "dpi": args.dpi},
        files=[f"{r.path.name}:{r.first}-{r.last}" for r in ranges],
    )
    runs: list[tuple[BareStats | None, StackStats | None]] = []
    for n in range(1, args.rounds + 1):
        of = f" (round {n} of {args.rounds})" if args.rounds > 1 else ""
        stack: StackStats | None = None
        bare: BareStats | None = None
        if not args.skip_stack:
            note(f"{name}: {sum(r.pages for r in ranges)} pages in {len(ranges)} jobs through the stack{of}")
            stack = await stack_run(
                settings, ranges, options, timeout_s=args.timeout, role_pids=role_pids, warmup=warmup
            )
        if not args.skip_bare:
            note(f"{name}: the same pages through the bare loop{of}")
            if args.workers == 1:
                bare = await asyncio.to_thread(
                    bare_loop, ranges, options, engines, max_megapixels=worker.max_megapixels
                )
            else:
                size = bare_task_size(engine, name == "ocr", PlannerSettings(), worker)
                bare = await asyncio.to_thread(bare_loops, ranges, options, worker, args.workers, size)
        runs.append((bare, stack))
    phase.rounds = [(b.pages_per_s if b else None, s.pages_per_s if s else None) for b, s in runs]
    phase.bare, phase.stack = runs[median_round(phase.rounds)]
    return phase


async def run(args: argparse.Namespace) -> int:
    """``pagewire bench``: measure, then print tables (or one JSON object with ``--json``)."""
    from rich.console import Console

    # Piped output (a file, the docs) gets a width that fits the stage table; a terminal keeps its own.
    console = Console(stderr=args.json, width=None if sys.stdout.isatty() else 150)
    if args.engine == "sim":
        return await run_sim(args, console)
    files = [Path(f) for f in args.files] or corpus_files(DEFAULT_CORPUS)
    workload = select_corpus(files, text_pages=args.text_pages, ocr_pages=args.ocr_pages)
    env = await asyncio.to_thread(_stack_env, args)
    settings = ClientSettings.from_variables(env)
    worker = _worker_settings(env, args.workers)
    engines = worker_engines(worker)
    report = BenchReport(
        machine=machine_info()
        | {"worker_engine": str(worker.engine), "workers": args.workers, "ocr_threads": worker.ocr_threads}
    )

    def note(text: str) -> None:
        console.log(text)

    from tools.devstack import worker_names

    roles = {"planner": ["planner"], "worker": worker_names(args.workers), "recorder": ["recorder"]}
    role_pids = {
        role: pids
        for role, names in roles.items()
        if (pids := [pid for name in names if (pid := dev_pid(Path(args.state_dir), name))])
    }
    one_page = _latency_pdf(workload)
    with tempfile.TemporaryDirectory(prefix="pagewire-bench-") as scratch:
        phases: list[tuple[str, list[PageRange]]] = [("text", workload.text)]
        if args.long_pages > 0 and args.engine not in ("rapidocr", "tesseract"):
            long_pdf = Path(scratch) / f"long-{args.long_pages}-pages.pdf"
            long_pdf.write_bytes(long_text_pdf(args.long_pages))
            phases.append(("long", [PageRange(long_pdf, 1, args.long_pages)]))
        phases.append(("ocr", workload.ocr))
        for name, ranges in phases:
            if ranges:
                report.phases.append(
                    await _phase(args, name, ranges, settings, worker, engines, role_pids, one_page, note)
                )
    if not args.skip_stack and args.latency_runs > 0:
        note(f"latency: {args.latency_runs} submits of one born-digital page")
        report.latency = await first_event_latency(settings, one_page, runs=args.latency_runs)
    if args.recorder_events > 0:
        note(f"recorder: {args.recorder_events} synthetic events, then as many message bodies, in batches")
        report.recorder = await recorder_throughput(settings.database_url.get_secret_value(), args.recorder_events)
    report.targets = check_targets(report)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        render_report(report, console)
    return 0


async def run_sim(args: argparse.Namespace, console: Any) -> int:
    """``pagewire bench --engine sim``: the batched pipeline through the stack and bare (:mod:`tools.bench_sim`)."""
    with tempfile.TemporaryDirectory(prefix="pagewire-bench-sim-") as scratch:
        return await _run_sim(args, console, scratch)


async def _run_sim(args: argparse.Namespace, console: Any, scratch: str) -> int:
    from rich.table import Table

    from tools import bench_sim, devstack

    files = [Path(f) for f in args.files] or corpus_files(DEFAULT_CORPUS)
    scans = select_corpus(files, text_pages=0, ocr_pages=10**6).ocr
    if not scans:
        console.log("no scanned pages among the files: nothing for the device to read")
        return 2
    taken = _take(scans, args.sim_pages, repeat=True)
    made = bench_sim.documents(
        [(str(r.path), n) for r in taken for n in range(r.first, r.last + 1)], bench_sim.SIM_DOCUMENT_PAGES, scratch
    )
    ranges = [PageRange(Path(path), first, last) for path, first, last in made]
    variables = bench_sim.sim_env()
    fields: dict[str, Any] = {key.removeprefix("PAGEWIRE_").lower(): value for key, value in variables.items()}
    worker = WorkerSettings(**fields)
    options = JobOptions(engine=Engine.SIM, dpi=args.dpi)
    pages = sum(r.pages for r in ranges)
    stack_rate = bare_rate = busy = bare_busy = None
    if not args.skip_stack:
        state_dir = Path(args.state_dir)
        if not args.no_dev_up:
            console.log("sim: the dev stack's roles restarted with the simulated device")
            await asyncio.to_thread(devstack.dev_down, state_dir)
            await asyncio.to_thread(
                devstack.dev_up, state_dir, base_env={**os.environ, **variables}, workers=args.workers
            )
        try:
            env = await asyncio.to_thread(devstack.dev_env, state_dir)
            settings = ClientSettings.from_variables(env)
            first = ranges[0]
            await stack_run(settings, [PageRange(first.path, first.first, first.first)], options)  # warm-up
            port = devstack.metrics_port("worker")
            before = await asyncio.to_thread(bench_sim.device_busy_s, port)
            console.log(f"sim: {pages} scanned pages in {len(ranges)} jobs through the stack")
            stack = await stack_run(settings, ranges, options, timeout_s=args.timeout)
            busy = (await asyncio.to_thread(bench_sim.device_busy_s, port) - before) / stack.wall_s
            stack_rate = stack.pages_per_s
        finally:
            if not args.no_dev_up:
                console.log("sim: the dev stack's roles back to their own engine")
                await asyncio.to_thread(devstack.dev_down, state_dir)
                await asyncio.to_thread(devstack.dev_up, state_dir, workers=args.workers)
    if not args.skip_bare:
        console.log(f"sim: the same {pages} pages through the bare pipeline")
        read, wall, device_s = await bench_sim.bare_batched(
            [(str(r.path), r.first, r.last) for r in ranges], options, worker, worker.ocr_pages_per_task
        )
        bare_rate, bare_busy = read / wall, device_s / wall
    stats = bench_sim.SimStats(
        pages=pages,
        batch_pages=worker.gpu_batch_pages,
        render_processes=worker.render_processes,
        sim_batch_ms=worker.sim_batch_ms,
        sim_page_ms=worker.sim_page_ms,
        stack_pages_per_s=stack_rate,
        bare_pages_per_s=bare_rate,
        ratio=stack_rate / bare_rate if stack_rate and bare_rate else None,
        device_busy=busy,
        bare_device_busy=bare_busy,
    )
    if args.json:
        print(json.dumps(_finite({"machine": machine_info(), "sim": asdict(stats)}), indent=2))
        return 0
    table = Table(title=f"simulated device ({worker.sim_batch_ms:g} ms a batch + {worker.sim_page_ms:g} ms a page)")
    for column in ("", "bare", "stack"):
        table.add_column(column, justify="right")
    table.add_row("pages/s", _fmt(bare_rate, 2), _fmt(stack_rate, 2))
    table.add_row("device busy", _fmt(bare_busy, 3), _fmt(busy, 3))
    table.add_row("ratio (stack / bare)", "", _fmt(stats.ratio, 3))
    console.print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tools.bench``: the same command outside ``pagewire``."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description="pagewire bench")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
