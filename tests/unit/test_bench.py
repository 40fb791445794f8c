"""The pure parts of ``pagewire bench``: statistics, corpus selection, targets and the report's shape."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from schemas.messages import Engine, JobCompleted, JobOptions, JobStarted, PageCompleted, Source
from tools.bench import (
    BareStats,
    BenchReport,
    PageRange,
    Phase,
    RecorderStats,
    StackStats,
    _Job,
    _runs,
    _take,
    add_parser,
    check_targets,
    cpu_delta,
    median_round,
    percentile,
    render_report,
    stack_stages,
    summarize,
)


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([0.0, 10.0], 0.95) == 9.5


def test_summarize_gives_count_total_and_spread() -> None:
    stage = summarize("render", "pdfium", [10.0, 20.0, 30.0, 40.0])
    assert (stage.count, stage.total_ms, stage.mean_ms, stage.max_ms) == (4, 100.0, 25.0, 40.0)
    assert summarize("none", "", []).mean_ms == 0.0


def test_runs_split_pages_by_their_text_layer() -> None:
    flags = [True, True, False, True, False, False]
    assert _runs(flags, True) == [(1, 2), (4, 4)]
    assert _runs(flags, False) == [(3, 3), (5, 6)]


def test_take_caps_and_repeats() -> None:
    a, b = PageRange(Path("a.pdf"), 1, 3), PageRange(Path("b.pdf"), 2, 2)
    assert _take([a, b], 2, repeat=False) == [PageRange(Path("a.pdf"), 1, 2)]
    repeated = _take([a, b], 6, repeat=True)
    assert sum(r.pages for r in repeated) == 6
    assert repeated[-1] == PageRange(Path("a.pdf"), 1, 2)
    assert _take([a], 10, repeat=False) == [a]


def test_cpu_delta_counts_new_processes_and_leaves_the_rest_to_other() -> None:
    before = {"worker": {1: 10.0}, "postgresql": {2: 1.0}, "machine": {0: 100.0}}
    after = {"worker": {1: 12.0}, "postgresql": {2: 1.5, 3: 0.5}, "machine": {0: 104.0}}
    assert cpu_delta(before, after) == {"worker": 2.0, "postgresql": 1.0, "machine": 4.0, "other": 1.0}


def _page(job_id: str, page_no: int, at: float, engine: Engine, duration: float, render: float) -> PageCompleted:
    return PageCompleted(
        job_id=job_id,
        page_no=page_no,
        text="x",
        confidence=1.0,
        engine=engine,
        duration_ms=duration,
        render_ms=render,
        worker="w",
        occurred_at=datetime.fromtimestamp(at, UTC),
    )


def test_stack_stages_come_from_the_events() -> None:
    job = _Job(PageRange(Path("a.pdf"), 1, 2), job_id="j", submit_start=100.0, submit_end=100.05)
    started = JobStarted(
        job_id="j",
        source=Source(bucket="bench", key="jobs/j/source.pdf"),
        options=JobOptions(),
        total_pages=2,
        first_page=1,
        last_page=2,
        tasks=1,
    )
    job.events = [
        (100.1, started),
        (105.0, _page("j", 1, 104.99, Engine.RAPIDOCR, 4000.0, 50.0)),
        (106.0, _page("j", 2, 105.998, Engine.TEXT, 2.0, 0.0)),
        (106.2, JobCompleted(job_id="j", pages_ok=2, pages_failed=0, result_keys={}, bucket="b")),
    ]
    stages, engines, busy_ms = stack_stages([job], download_ms=[3.0])
    by_name = {s.name: s for s in stages}
    assert engines == {"rapidocr": 1, "text": 1}
    assert busy_ms == 4002.0
    assert by_name["OCR"].total_ms == 3950.0
    assert by_name["render"].total_ms == 50.0
    assert by_name["text layer"].count == 1
    assert round(by_name["record"].total_ms) == 200
    assert round(by_name["upload"].total_ms) == 50
    assert by_name["download"].count == 1


def _report() -> BenchReport:
    bare = BareStats(pages=4, wall_s=20.0, pages_per_s=0.2, cpu_s=39.0, engines={"rapidocr": 4}, stages=[])
    stack = StackStats(
        jobs=3,
        pages=4,
        pages_ok=4,
        pages_failed=0,
        rows_completed=4,
        wall_s=20.5,
        pages_per_s=4 / 20.5,
        first_event_s=5.2,
        worker_busy_share=0.98,
        cpu_s={"worker": 39.5},
        loadavg=(0.5, 1.9),
        engines={"rapidocr": 4},
        stages=[summarize("OCR", "worker", [5000.0] * 4)],
        statuses={"completed": 3},
    )
    recorder = RecorderStats(
        events=10,
        batch_size=5,
        batched_s=0.001,
        batched_events_per_s=10000.0,
        single_events=1,
        single_s=0.01,
        single_events_per_s=100.0,
        text_chars=10,
        blocks_per_page=1,
    )
    report = BenchReport(machine={"cores": 2}, recorder=recorder)
    report.phases.append(Phase("ocr", {"engine": "auto"}, ["a.pdf:1-4"], bare=bare, stack=stack))
    report.targets = check_targets(report)
    return report


def test_targets_compare_what_was_measured() -> None:
    checks = {c.name: c for c in _report().targets}
    ratio = checks["OCR pages: stack / bare loop"]
    assert ratio.measured is not None and abs(ratio.measured - 20.0 / 20.5) < 1e-9
    assert ratio.met is True
    assert checks["recorder page events/s into PostgreSQL"].met is True
    # Not measured in this report: the mix's row says so, and the long document's is left out.
    assert checks["born-digital pages/s end to end (auto), corpus mix, a job per range"].met is None
    assert not any("one long document" in name for name in checks)


def test_each_born_digital_workload_is_checked_against_the_target_on_its_own() -> None:
    report = _report()
    measured = report.phases[0].stack
    assert measured is not None
    mix, long = (replace(measured, pages_per_s=rate) for rate in (150.0, 320.0))
    report.phases += [Phase("text", {}, [], stack=mix), Phase("long", {}, [], stack=long)]

    checks = {c.name: c for c in check_targets(report)}

    assert checks["born-digital pages/s end to end (auto), corpus mix, a job per range"].met is False
    assert checks["born-digital pages/s end to end (auto), one long document"].met is True
    assert checks["born-digital pages/s end to end (auto), one long document"].measured == 320.0


def test_report_prints_as_tables_and_as_json() -> None:
    report = _report()
    out = StringIO()
    render_report(report, Console(file=out, width=160))
    text = out.getvalue()
    assert "ratio stack/bare" in text and "targets" in text and "recorder apply_batch" in text
    body = json.loads(json.dumps(report.to_json()))
    assert body["phases"][0]["ratio"] == report.phases[0].ratio
    assert {"machine", "phases", "latency", "recorder", "targets"} <= body.keys()


def test_the_round_reported_is_the_one_of_the_median_ratio() -> None:
    # ratios 0.5, 0.4, 0.45: the median is the third round's, whatever its pages/s
    assert median_round([(200.0, 100.0), (250.0, 100.0), (220.0, 99.0)]) == 2
    # an even count: the lower middle one (ratios 0.5, 0.4, 0.45, 0.6 -> 0.45)
    assert median_round([(200.0, 100.0), (250.0, 100.0), (220.0, 99.0), (100.0, 60.0)]) == 2
    # a loop skipped: the stack's pages/s, else the bare loop's
    assert median_round([(None, 90.0), (None, 110.0), (None, 100.0)]) == 2
    assert median_round([(300.0, None), (200.0, None)]) == 1
    assert median_round([(200.0, 100.0)]) == 0
    with pytest.raises(ValueError):
        median_round([])


def test_every_round_is_shown_beside_the_one_reported() -> None:
    report = _report()
    report.phases[0].rounds = [(20.5, 20.0), (21.0, 19.0), (19.5, 20.1)]
    out = StringIO()
    render_report(report, Console(file=out, width=200))
    assert "pages/s of each round (3; shown: the median ratio)" in out.getvalue()
    assert "20.50, 21.00, 19.50" in out.getvalue() and "20.00, 19.00, 20.10" in out.getvalue()
    body = json.loads(json.dumps(report.to_json()))
    assert body["phases"][0]["rounds"] == [[20.5, 20.0], [21.0, 19.0], [19.5, 20.1]]


def test_rounds_must_be_one_or_more() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    assert parser.parse_args(["bench", "--rounds", "3"]).rounds == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--rounds", "0"])
