"""The user's commands: ``submit``, ``status``, ``result``, ``cancel``, ``retry`` and ``watch``.

Each parses its arguments and calls the Python API: :mod:`producer.api`
(broker, database and S3 directly), or :mod:`producer.http_client` when an API
URL is set (``pagewire --api URL`` or ``PAGEWIRE_API_URL``), with the same
output and exit codes. Exit codes are those of :mod:`producer.output`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from producer.output import EXIT_JOB_FAILED, EXIT_NOT_FOUND, EXIT_OK, FINAL_EVENTS, err_console, jsonable, seconds

if TYPE_CHECKING:
    from producer.api import Client
    from producer.http_client import HttpClient
    from schemas.messages import JobRequest
    from schemas.settings import ClientSettings


def client_settings(args: argparse.Namespace) -> ClientSettings:
    """The user commands' settings; ``pagewire --api URL`` wins over ``PAGEWIRE_API_URL``."""
    from schemas.settings import ClientSettings

    api = getattr(args, "api", None)
    return ClientSettings(api_url=api) if api else ClientSettings()


def open_client(settings: ClientSettings) -> Client | HttpClient:
    """The gateway's client where an API URL is set, the direct one (broker, database, S3) otherwise."""
    if settings.api_url:
        from producer.http_client import HttpClient

        return HttpClient(settings)
    from producer.api import Client

    return Client(settings)


def _check_files(args: argparse.Namespace) -> None:
    """Refuse the command before connecting to anything: a missing or unreadable file queues none of the others."""
    from schemas.errors import ConfigurationError

    if args.job_id and len(args.files) > 1:
        raise ConfigurationError("--job-id names one job: give it one file")
    for path in args.files:
        with Path(path).open("rb"):
            pass


async def _queue(client: Client | HttpClient, args: argparse.Namespace) -> list[JobRequest]:
    from schemas.messages import Engine, JobOptions

    options = JobOptions(engine=Engine(args.engine), dpi=args.dpi, first_page=args.first_page, last_page=args.last_page)
    err = err_console()
    requests = []
    for path in args.files:
        request = await client.submit(
            Path(path),
            options=options,
            job_id=args.job_id,
            priority=args.priority,
            idempotency_key=args.idempotency_key,
            deadline=datetime.now(UTC) + timedelta(seconds=args.deadline) if args.deadline else None,
            submitted_by=args.submitted_by,
        )
        requests.append(request)
        if not args.json:
            err.print(f"queued [bold]{path}[/] as job {request.job_id}")
    return requests


async def _report(
    client: Client | HttpClient, args: argparse.Namespace, requests: list[JobRequest], finals: dict[str, str]
) -> int:
    worst = EXIT_OK
    for request in requests:
        row = await client.final_status(request.job_id)
        if args.json:
            print(json.dumps({k: jsonable(v) for k, v in row.items()}))
        else:
            # A job that failed before it was planned has no page count.
            pages = f"{row['pages_ok']}/{row['total_pages']} pages" if row["total_pages"] is not None else ""
            error = f"{row['error_code']}" + (f": {row['error_message']}" if row["error_message"] else "")
            detail = "; ".join(part for part in (pages, error if row["error_code"] else "") if part)
            print(request.job_id, row["status"], detail)
        if finals.get(request.job_id) != "JobCompleted" or row["status"] != "completed":
            worst = EXIT_JOB_FAILED
    return worst


def _print_ids(args: argparse.Namespace, requests: list[JobRequest]) -> int:
    for request in requests:
        print(json.dumps({"job_id": request.job_id}) if args.json else request.job_id)
    return EXIT_OK


async def _ended(client: Client | HttpClient, job_ids: list[str], *, known: bool) -> dict[str, dict[str, Any]]:
    """The status rows of the jobs among ``job_ids`` that have ended already (a job submitted again with its
    idempotency key, a job watched after it ended): their terminal events went out before anyone listened.

    ``known``: every job must exist (``job_not_found`` otherwise); a job just submitted may not have a row yet.
    """
    from schemas.errors import ErrorCode, PagewireError

    ended = {}
    for job_id in job_ids:
        try:
            row = await client.status(job_id)
        except PagewireError as exc:
            if known or exc.code != ErrorCode.JOB_NOT_FOUND:
                raise
            continue
        if row["status"] in FINAL_EVENTS:
            ended[job_id] = row
    return ended


async def _gave_up(client: Client | HttpClient, args: argparse.Namespace, requests: list[JobRequest]) -> int:
    """``--wait`` ran past ``--timeout``: each job's row as it stands (its id on stdout), and why on stderr."""
    from schemas.errors import PagewireError

    for request in requests:
        try:
            row = await client.status(request.job_id)
        except PagewireError:
            # Queued (the broker confirmed it), not yet in the tables.
            row = {"job_id": request.job_id, "status": "queued"}
        if args.json:
            print(json.dumps({k: jsonable(v) for k, v in row.items()}))
        else:
            print(request.job_id, row["status"])
    print(f"pagewire: gave up waiting after {args.timeout:g} s; the jobs go on", file=sys.stderr)
    return EXIT_NOT_FOUND


async def _submit(args: argparse.Namespace) -> int:
    from producer.api import Client
    from producer.progress import follow

    _check_files(args)
    settings = client_settings(args)
    client = open_client(settings)
    if not isinstance(client, Client):
        # Through the gateway: each job's event stream replays from the tables, so following after submitting
        # misses nothing.
        async with client:
            requests = await _queue(client, args)
            if not args.wait:
                return _print_ids(args, requests)
            names = {r.job_id: Path(p).name for r, p in zip(requests, args.files, strict=True)}
            try:
                finals = await asyncio.wait_for(client.follow(names, quiet=args.json), args.timeout)
            except TimeoutError:
                return await _gave_up(client, args, requests)
            return await _report(client, args, requests, finals)
    async with client, client.subscribe() as events:  # subscribed first: no event is missed
        requests = await _queue(client, args)
        if not args.wait:
            return _print_ids(args, requests)
        names = {r.job_id: Path(p).name for r, p in zip(requests, args.files, strict=True)}
        ended = await _ended(client, list(names), known=False)
        try:
            finals = await asyncio.wait_for(follow(events, names, quiet=args.json, ended=ended), args.timeout)
        except TimeoutError:
            return await _gave_up(client, args, requests)
        return await _report(client, args, requests, finals)


async def _status(args: argparse.Namespace) -> int:
    async with open_client(client_settings(args)) as client:
        row = await client.status(args.job)
    if args.json:
        print(json.dumps({k: jsonable(v) for k, v in row.items()}))
    else:
        width = max(len(k) for k in row)
        for key, value in row.items():
            print(f"{key:<{width}}  {jsonable(value) if value is not None else '-'}")
    return EXIT_OK


async def _result(args: argparse.Namespace) -> int:
    async with open_client(client_settings(args)) as client:
        body = await client.result(args.job, args.format)
    if args.output:
        await asyncio.to_thread(Path(args.output).write_bytes, body)
    else:
        sys.stdout.buffer.write(body)
    return EXIT_OK


async def _cancel(args: argparse.Namespace) -> int:
    from schemas.tables import TERMINAL_JOB_STATUSES

    async with open_client(client_settings(args)) as client:
        row = await client.status(args.job)
        if row["status"] in TERMINAL_JOB_STATUSES:
            print(f"pagewire: job {args.job} already ended ({row['status']}): nothing to cancel", file=sys.stderr)
            return EXIT_JOB_FAILED
        await client.cancel(args.job, args.reason)
        row = await client.final_status(args.job, wait_s=10)
    print(args.job, row["status"])
    return EXIT_OK


async def _retry(args: argparse.Namespace) -> int:
    async with open_client(client_settings(args)) as client:
        queued = await client.retry(args.job)
        row = await client.status(args.job) if not queued else None
    if row is not None and row["status"] == "failed":
        # Failed as a whole (not a PDF, encrypted, ...): no page was read, so none can be read again.
        print(
            f"pagewire: job {args.job} failed before any page was read ({row['error_code']}): nothing to retry;"
            " submit the file again once it is fixed",
            file=sys.stderr,
        )
        return EXIT_JOB_FAILED
    if not queued:
        print(f"job {args.job} has no failed pages", file=sys.stderr)
        return EXIT_OK
    print(f"queued again: {len(queued)} page(s): {', '.join(map(str, queued))}")
    return EXIT_OK


async def _watch(args: argparse.Namespace) -> int:
    from producer.api import Client
    from producer.progress import follow, print_events

    client = open_client(client_settings(args))
    if not isinstance(client, Client):
        async with client:
            if args.job:
                await client.status(args.job)  # job_not_found before following a stream that would never end
                finals = await client.follow({args.job: args.job}, quiet=False)
                return EXIT_OK if finals.get(args.job) == "JobCompleted" else EXIT_JOB_FAILED
            await client.print_events(as_json=args.json)
        return EXIT_OK
    async with client, client.subscribe() as events:  # subscribed first: an end after the look below is seen
        if args.job:
            ended = await _ended(client, [args.job], known=True)
            finals = await follow(events, {args.job: args.job}, quiet=False, ended=ended)
            return EXIT_OK if finals.get(args.job) == "JobCompleted" else EXIT_JOB_FAILED
        await print_events(events, as_json=args.json)
    return EXIT_OK


def add_parsers(sub: Any) -> None:
    """Add the user's commands to the ``pagewire`` parser's subcommands."""
    p = sub.add_parser(
        "submit",
        help="upload PDFs (or images) to S3 and queue them",
        description="Upload PDFs, or PNG, JPEG or TIFF images (a page a frame), and queue a job each.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="PDF or image files to read")
    p.add_argument(
        "--engine",
        choices=["auto", "text", "rapidocr", "tesseract", "nemotron"],
        default="auto",
        help="auto: the text layer where a page has real text, OCR otherwise (default)",
    )
    p.add_argument("--dpi", type=int, default=150, help="render resolution for OCR (default 150)")
    p.add_argument("--first-page", type=int, help="first page to read, 1-based")
    p.add_argument("--last-page", type=int, help="last page to read, inclusive")
    p.add_argument("--priority", type=int, default=0, choices=range(10), metavar="0-9", help="higher goes first")
    p.add_argument("--job-id", help="use this job id (one file only)")
    p.add_argument("--submitted-by", help="who asks (stored with the job)")
    p.add_argument(
        "--idempotency-key", help="the same key gives the same job: a second submit with it is not read again"
    )
    p.add_argument(
        "--deadline", type=seconds, metavar="SECONDS", help="drop work still to do this many seconds from now"
    )
    p.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")
    p.add_argument("--timeout", type=seconds, default=3600, help="with --wait: give up after this many seconds")
    p.add_argument("--json", action="store_true", help="print JSON (the job id; with --wait, the status row)")
    p.set_defaults(func=_submit)

    p = sub.add_parser("status", help="a job's status row", description="Print one job's status row.")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_status)

    p = sub.add_parser("result", help="a finished job's text", description="Print a finished job's assembled result.")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--format", choices=["md", "json"], default="md")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    p.set_defaults(func=_result)

    p = sub.add_parser(
        "cancel",
        help="cancel a job: remaining pages are skipped",
        description="Cancel a queued or running job. Workers skip its remaining pages (within one page); "
        "the row says cancelled and a JobCancelled event goes out.",
    )
    p.add_argument("job", metavar="JOB")
    p.add_argument("--reason", default="", help="stored with the job")
    p.set_defaults(func=_cancel)

    p = sub.add_parser(
        "retry",
        help="queue a job's failed pages again",
        description="Queue the pages of a job that failed for good again (after fixing the cause). "
        "When they all succeed the job becomes completed.",
    )
    p.add_argument("job", metavar="JOB")
    p.set_defaults(func=_retry)

    p = sub.add_parser(
        "watch",
        help="live events, all jobs or one with a progress bar",
        description="Follow the event exchange. With JOB: a progress bar until it ends.",
    )
    p.add_argument("job", metavar="JOB", nargs="?")
    p.add_argument("--json", action="store_true", help="print each event as a JSON line")
    p.set_defaults(func=_watch)
