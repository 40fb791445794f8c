"""Write every page to a folder as it arrives: ``python examples/page_writer.py OUTDIR``.

A subscriber to pagewire's events, as another service would write one:

- ``OUTDIR/{job_id}/page-0001.txt`` for each ``PageCompleted`` (the page's text);
- ``OUTDIR/{job_id}/page-0001.failed.json`` for each final ``PageFailed``;
- ``OUTDIR/{job_id}/job.json`` when the job ends (``JobCompleted``,
  ``JobFailed`` or ``JobCancelled``), with the outcome.

Each file is written to a temporary name and renamed, and its name depends
only on the job and page, so an event delivered twice (delivery is at least
once) rewrites the same file: no duplicate, no half-written file. With
``--queue NAME`` the queue is durable: pages that arrive while the writer is
stopped wait for it. Stop it with Ctrl-C or SIGTERM; the event in hand is
finished first. Settings come from the ``PAGEWIRE_*`` variables (``eval "$(pagewire
dev env)"`` for the local stack).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

# Run as a script from a checkout: make the repository's packages importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from producer.subscribe import subscribe
from schemas.messages import Event, JobCancelled, JobCompleted, JobFailed, PageCompleted, PageFailed
from schemas.settings import ClientSettings

log = logging.getLogger("page_writer")


def write_atomically(path: Path, data: str) -> None:
    """Write ``data`` to ``path`` so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_event(outdir: Path, event: Event) -> Path | None:
    """The file this event becomes, written; None for events that make no file."""
    folder = outdir / event.job_id
    if isinstance(event, PageCompleted):
        path = folder / f"page-{event.page_no:04d}.txt"
        write_atomically(path, event.text)
        return path
    if isinstance(event, PageFailed) and event.final:
        path = folder / f"page-{event.page_no:04d}.failed.json"
        write_atomically(path, json.dumps({"error_code": str(event.error_code), "message": event.message}))
        return path
    if isinstance(event, JobCompleted | JobFailed | JobCancelled):
        path = folder / "job.json"
        write_atomically(path, event.model_dump_json(indent=2))
        return path
    return None


async def run(outdir: Path, queue: str | None, job_ids: list[str]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    settings = ClientSettings()
    async with subscribe(settings, queue, durable=queue is not None, job_ids=job_ids or None) as events:
        log.info("writing pages to %s (queue %s)", outdir, events.queue)
        print(f"ready: queue {events.queue}", flush=True)
        iterator = aiter(events)
        while not stop.is_set():
            next_event = asyncio.ensure_future(anext(iterator))
            stopping = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({next_event, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if next_event not in done:
                next_event.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await next_event
                break
            stopping.cancel()
            try:
                event = next_event.result()
            except StopAsyncIteration:
                break
            path = await asyncio.to_thread(write_event, outdir, event)
            if path is not None:
                log.info("%s %s -> %s", event.type, event.job_id, path)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Write each page of each pagewire job to OUTDIR as it arrives.")
    parser.add_argument("outdir", type=Path, metavar="OUTDIR")
    parser.add_argument("--queue", help="a durable queue of this name keeps events while the writer is stopped")
    parser.add_argument("--job", action="append", default=[], metavar="JOB", help="only this job (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return asyncio.run(run(args.outdir, args.queue, args.job))


if __name__ == "__main__":
    sys.exit(main())
