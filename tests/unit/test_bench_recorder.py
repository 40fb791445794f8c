"""The recorder rows of ``pagewire bench``'s report: from events, and from message bodies when measured."""

from __future__ import annotations

import json
import math
from io import StringIO

from rich.console import Console

from tools.bench import BenchReport, RecorderStats, check_targets, render_report


def stats(**bodies: float) -> RecorderStats:
    return RecorderStats(
        events=10_000,
        batch_size=500,
        batched_s=1.8,
        batched_events_per_s=10_000 / 1.8,
        single_events=500,
        single_s=10.0,
        single_events_per_s=50.0,
        text_chars=1750,
        blocks_per_page=60,
        **bodies,
    )


def rendered(report: BenchReport) -> str:
    out = StringIO()
    render_report(report, Console(file=out, width=160))
    return out.getvalue()


def test_the_bodies_row_is_printed_and_in_the_json_beside_the_old_keys() -> None:
    report = BenchReport(machine={}, recorder=stats(bodies_events=10_000, bodies_s=4.0, bodies_events_per_s=2500.0))
    report.targets = check_targets(report)

    text = rendered(report)
    assert "batches of 500 from message bodies" in text and "2,500" in text
    body = json.loads(json.dumps(report.to_json()))["recorder"]
    assert body["batched_events_per_s"] == 10_000 / 1.8  # the target's figure, as before
    assert (body["bodies_events"], body["bodies_events_per_s"]) == (10_000, 2500.0)
    assert {c.name: c.measured for c in report.targets}["recorder page events/s into PostgreSQL"] == 10_000 / 1.8


def test_without_bodies_there_is_no_row_and_the_json_says_none() -> None:
    recorder = stats()
    assert math.isnan(recorder.bodies_events_per_s)
    report = BenchReport(machine={}, recorder=recorder)

    assert "message bodies" not in rendered(report)
    body = json.loads(json.dumps(report.to_json()))["recorder"]
    assert (body["bodies_events"], body["bodies_s"], body["bodies_events_per_s"]) == (0, None, None)
