"""Progress bars and event printing for the commands that follow jobs."""

from __future__ import annotations

from typing import Any

from producer.api import Subscription
from producer.output import FINAL_EVENTS, LABELS, job_bars
from schemas.messages import TERMINAL_EVENTS, JobStarted, PageCompleted, PageFailed


async def follow(
    events: Subscription, names: dict[str, str], *, quiet: bool, ended: dict[str, dict[str, Any]] | None = None
) -> dict[str, str]:
    """Show a bar per job until every job in ``names`` has ended; returns job id -> terminal event type.

    ``ended``: the status rows of jobs that had ended before ``events`` was subscribed to; their
    terminal events went out before, so they are shown as they ended and not waited for.
    """
    ended = ended or {}
    finals = {job_id: FINAL_EVENTS[row["status"]] for job_id, row in ended.items()}
    seen: dict[str, set[int]] = {job_id: set() for job_id in names}
    with job_bars(quiet=quiet) as progress:
        bars = {job_id: progress.add_task(name, total=None) for job_id, name in names.items()}
        for job_id, row in ended.items():
            label = f"{names[job_id]} {LABELS[finals[job_id]]}"
            progress.update(bars[job_id], description=label, total=row["total_pages"], completed=row["pages_done"])
        async for event in events.for_jobs(set(names) - set(finals)):
            bar = bars[event.job_id]
            if isinstance(event, JobStarted):
                progress.update(bar, total=event.total_pages)
            elif isinstance(event, PageCompleted) or (isinstance(event, PageFailed) and event.final):
                seen[event.job_id].add(event.page_no)
                progress.update(bar, completed=len(seen[event.job_id]))
            elif isinstance(event, TERMINAL_EVENTS):
                finals[event.job_id] = event.type
                progress.update(bar, description=f"{names[event.job_id]} {LABELS[event.type]}")
                if event.type == "JobFailed" and not quiet:
                    progress.console.print(f"[red]{names[event.job_id]}: {event.error_code}: {event.message}")
    return finals


async def print_events(events: Subscription, *, as_json: bool) -> None:
    """Print every event until interrupted: one line each."""
    async for event in events:
        if as_json:
            print(event.model_dump_json(), flush=True)
            continue
        detail = ""
        if isinstance(event, PageCompleted):
            detail = f"page {event.page_no} {event.engine} {len(event.text)} chars {event.duration_ms:.0f} ms"
        elif isinstance(event, PageFailed):
            detail = f"page {event.page_no} {event.error_code} attempt {event.attempt} final={event.final}"
        elif isinstance(event, JobStarted):
            detail = f"{event.total_pages} pages in {event.tasks} tasks"
        print(f"{event.occurred_at:%H:%M:%S} {event.type:<13} {event.job_id} {detail}", flush=True)
