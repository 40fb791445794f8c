"""More than one worker: the names, ports and thread shares ``dev up --workers`` gives them, and the
bare loop run as that many processes on real PDFs (pdfium in spawned children)."""

from __future__ import annotations

from pathlib import Path

from schemas.messages import Engine, JobOptions
from schemas.settings import PlannerSettings, WorkerSettings
from tools.bench import PageRange, bare_loop, bare_loops, bare_task_size, task_ranges, worker_engines
from tools.devstack import DEV_METRICS_PORTS, MAX_WORKERS, metrics_port, ocr_threads_each, worker_names
from tools.samples import lines, text_pdf


def test_workers_are_named_after_the_first_and_each_has_a_metrics_port_of_its_own() -> None:
    assert worker_names(1) == ["worker"]
    assert worker_names(3) == ["worker", "worker-2", "worker-3"]
    ports = [metrics_port(name) for name in ["planner", "recorder", *worker_names(MAX_WORKERS)]]
    assert len(set(ports)) == len(ports)
    assert metrics_port("worker") == DEV_METRICS_PORTS["worker"]
    assert metrics_port("worker-2") == DEV_METRICS_PORTS["recorder"] + 1


def test_the_cores_are_shared_out_among_workers_for_ocr_and_none_gets_less_than_one() -> None:
    assert ocr_threads_each(1, cores=8) == 8
    assert ocr_threads_each(2, cores=8) == 4
    assert ocr_threads_each(3, cores=8) == 2
    assert ocr_threads_each(4, cores=2) == 1


def test_the_bare_loop_cuts_jobs_into_tasks_as_the_stack_does(tmp_path: Path) -> None:
    planner, worker = PlannerSettings(text_pages_per_task=4, ocr_pages_per_task=2), WorkerSettings(ocr_pages_per_task=1)
    # Text pages in tasks of the planner's text size; OCR jobs in the planner's OCR size; OCR pages of
    # an auto job as the worker hands them on
    assert bare_task_size(Engine.AUTO, False, planner, worker) == 4
    assert bare_task_size(Engine.TEXT, False, planner, worker) == 4
    assert bare_task_size(Engine.RAPIDOCR, True, planner, worker) == 2
    assert bare_task_size(Engine.AUTO, True, planner, worker) == 1

    pdf = tmp_path / "doc.pdf"
    tasks = task_ranges([PageRange(pdf, 1, 10), PageRange(pdf, 3, 3)], 4)
    assert [(t.first, t.last) for t in tasks] == [(1, 4), (5, 8), (9, 10), (3, 3)]


def test_the_bare_loop_in_two_processes_reads_every_page_once_as_one_process_does(tmp_path: Path) -> None:
    # Given two born-digital documents, one of 7 pages and one of 2, cut into tasks of 3 pages
    long, short = tmp_path / "long.pdf", tmp_path / "short.pdf"
    long.write_bytes(text_pdf([lines([f"Page {n} of the long one, with its own text layer."]) for n in range(7)]))
    short.write_bytes(text_pdf([lines([f"Page {n} of the short one."]) for n in range(2)]))
    jobs = [PageRange(long, 1, 7), PageRange(short, 1, 2)]
    options = JobOptions(engine=Engine.AUTO)
    settings = WorkerSettings(ocr_threads=1)

    # When the bare loop runs as two workers, and as one
    two = bare_loops(jobs, options, settings, 2, per_task=3)
    one = bare_loop(jobs, options, worker_engines(settings))

    # Then both read all nine pages from their text layers, the two processes a task at a time
    assert (two.pages, two.engines) == (one.pages, one.engines) == (9, {"text": 9})
    stages = {s.name: s.count for s in two.stages}
    assert stages == {"open": 4, "text layer": 9}  # tasks 1-3, 4-6, 7 and 1-2
    assert two.wall_s > 0 and two.cpu_s > 0
    assert two.pages_per_s == two.pages / two.wall_s
