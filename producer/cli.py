"""``pagewire``: one command, a subcommand per role and per user task.

This module only parses arguments, configures logging and calls the API
(``producer.api``) or a role's ``run``. Exit codes: 0 done, 1 a job failed
(or finished with errors), 2 usage error, 3 a service could not be reached,
4 not found / not ready.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND = 0, 1, 2, 3, 4

EPILOG = """\
examples:
  pagewire dev up                       start a local stack (S3, migrations, planner, worker, recorder)
  eval "$(pagewire dev env)"            point this shell at it
  pagewire submit scan.pdf --wait       queue a PDF, show a progress bar, print the job id
  pagewire status JOB --json            the job's status row
  pagewire result JOB > text.md         the assembled text
  pagewire watch                        every page event, live

Configuration comes from PAGEWIRE_* environment variables (see README).
"""


def configure_logging(level: str, fmt: str) -> None:
    from consumer.metrics import LogContextFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(LogContextFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for noisy in ("aiormq", "aio_pika", "botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in ("job_id", "page"):
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if hasattr(value, "total_seconds"):
        return value.total_seconds()
    if isinstance(value, int | float | str | bool | list | dict) or value is None:
        return value
    return str(value)


# --- user commands ------------------------------------------------------------


async def _submit(args: argparse.Namespace) -> int:
    from rich.console import Console

    from producer.api import Client
    from producer.progress import follow
    from schemas.messages import Engine, JobOptions
    from schemas.settings import ClientSettings

    settings = ClientSettings()
    options = JobOptions(engine=Engine(args.engine), dpi=args.dpi, first_page=args.first_page, last_page=args.last_page)
    err = Console(stderr=True)
    async with Client(settings) as client, client.subscribe() as events:
        requests = []
        for path in args.files:
            request = await client.submit(
                Path(path),
                options=options,
                job_id=args.job_id if len(args.files) == 1 else None,
                priority=args.priority,
                idempotency_key=args.idempotency_key,
                deadline=datetime.now(UTC) + timedelta(seconds=args.deadline) if args.deadline else None,
                submitted_by=args.submitted_by,
            )
            requests.append(request)
            if not args.json:
                err.print(f"queued [bold]{path}[/] as job {request.job_id}")
        if not args.wait:
            for request in requests:
                print(json.dumps({"job_id": request.job_id}) if args.json else request.job_id)
            return EXIT_OK
        names = {r.job_id: Path(p).name for r, p in zip(requests, args.files, strict=True)}
        finals = await asyncio.wait_for(follow(events, names, quiet=args.json), args.timeout)
        worst = EXIT_OK
        for request in requests:
            row = await client.final_status(request.job_id)
            if args.json:
                print(json.dumps({k: _jsonable(v) for k, v in row.items()}))
            else:
                detail = f"{row['pages_ok']}/{row['total_pages']} pages"
                if row["error_code"]:
                    detail = f"{row['error_code']}: {row['error_message']}"
                print(request.job_id, row["status"], detail)
            if finals.get(request.job_id) != "JobCompleted" or row["status"] != "completed":
                worst = EXIT_JOB_FAILED
        return worst


async def _status(args: argparse.Namespace) -> int:
    from producer.api import Client
    from schemas.settings import ClientSettings

    async with Client(ClientSettings()) as client:
        row = await client.status(args.job)
    if args.json:
        print(json.dumps({k: _jsonable(v) for k, v in row.items()}))
    else:
        width = max(len(k) for k in row)
        for key, value in row.items():
            print(f"{key:<{width}}  {_jsonable(value) if value is not None else '-'}")
    return EXIT_OK


async def _result(args: argparse.Namespace) -> int:
    from producer.api import Client
    from schemas.settings import ClientSettings

    async with Client(ClientSettings()) as client:
        body = await client.result(args.job, args.format)
    if args.output:
        await asyncio.to_thread(Path(args.output).write_bytes, body)
    else:
        sys.stdout.buffer.write(body)
    return EXIT_OK


async def _cancel(args: argparse.Namespace) -> int:
    from producer.api import Client
    from schemas.settings import ClientSettings
    from schemas.tables import TERMINAL_JOB_STATUSES

    async with Client(ClientSettings()) as client:
        row = await client.status(args.job)
        if row["status"] in TERMINAL_JOB_STATUSES:
            print(f"pagewire: job {args.job} already ended ({row['status']}): nothing to cancel", file=sys.stderr)
            return EXIT_JOB_FAILED
        await client.cancel(args.job, args.reason)
        row = await client.final_status(args.job, wait_s=10)
    print(args.job, row["status"])
    return EXIT_OK


async def _retry(args: argparse.Namespace) -> int:
    from producer.api import Client
    from schemas.settings import ClientSettings

    async with Client(ClientSettings()) as client:
        queued = await client.retry(args.job)
    if not queued:
        print(f"job {args.job} has no failed pages", file=sys.stderr)
        return EXIT_OK
    print(f"queued again: {len(queued)} page(s): {', '.join(map(str, queued))}")
    return EXIT_OK


async def _watch(args: argparse.Namespace) -> int:
    from producer.api import Client
    from producer.progress import follow, print_events
    from schemas.settings import ClientSettings

    async with Client(ClientSettings()) as client, client.subscribe() as events:
        if args.job:
            finals = await follow(events, {args.job: args.job}, quiet=False)
            return EXIT_OK if finals.get(args.job) == "JobCompleted" else EXIT_JOB_FAILED
        await print_events(events, as_json=args.json)
    return EXIT_OK


# --- roles ----------------------------------------------------------------------


async def _planner(args: argparse.Namespace) -> int:
    from consumer import planner
    from schemas.settings import PlannerSettings

    settings = PlannerSettings()
    configure_logging(settings.log_level, settings.log_format)
    await planner.run(settings, grace_s=args.grace)
    return EXIT_OK


async def _worker(args: argparse.Namespace) -> int:
    from consumer import worker
    from schemas.settings import WorkerSettings

    settings = WorkerSettings()
    configure_logging(settings.log_level, settings.log_format)
    await worker.run(settings, grace_s=args.grace)
    return EXIT_OK


async def _recorder(args: argparse.Namespace) -> int:
    from consumer import recorder
    from schemas.settings import RecorderSettings

    settings = RecorderSettings()
    configure_logging(settings.log_level, settings.log_format)
    await recorder.run(settings, grace_s=args.grace)
    return EXIT_OK


def _migrate(args: argparse.Namespace) -> int:
    from consumer.devstack import ensure_database
    from consumer.migrate import upgrade
    from schemas.settings import Settings

    url = Settings().database_url.get_secret_value()
    if args.create_database:
        ensure_database(url)
    upgrade(url, args.revision)
    print(f"database migrated to {args.revision}")
    return EXIT_OK


def _worker_count(text: str) -> int:
    from consumer.devstack import MAX_WORKERS

    value = int(text)
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_WORKERS}, not {value}")
    return value


def _dev(args: argparse.Namespace) -> int:
    from producer import devcli

    return devcli.run(args)


async def _demo(args: argparse.Namespace) -> int:
    from producer import devcli

    return await devcli.demo(args)


# --- parser ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pagewire",
        description="pagewire turns PDFs into text at scale: S3 in, RabbitMQ between, PostgreSQL status.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "submit", help="upload PDFs to S3 and queue them", description="Upload PDFs and queue a job each."
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="PDF files to read")
    p.add_argument(
        "--engine",
        choices=["auto", "text", "rapidocr", "nemotron"],
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
    p.add_argument("--deadline", type=float, metavar="SECONDS", help="drop work still to do this many seconds from now")
    p.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")
    p.add_argument("--timeout", type=float, default=3600, help="with --wait: give up after this many seconds")
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

    for name, func, grace, text in (
        ("planner", _planner, 30.0, "run a planner: JobRequest in, page tasks out"),
        ("worker", _worker, 60.0, "run an OCR worker: one page task at a time (prefetch=1)"),
        ("recorder", _recorder, 30.0, "run the recorder: events into PostgreSQL, results into S3"),
    ):
        p = sub.add_parser(name, help=text, description=text.capitalize() + ". Stops cleanly on SIGTERM.")
        p.add_argument(
            "--grace", type=float, default=grace, help=f"seconds to finish work in hand on SIGTERM ({grace:g})"
        )
        p.set_defaults(func=func)

    p = sub.add_parser("migrate", help="create or upgrade the status tables", description="Run the Alembic migrations.")
    p.add_argument("--revision", default="head")
    p.add_argument("--create-database", action="store_true", help="create the database first if it does not exist")
    p.set_defaults(func=_migrate)

    p = sub.add_parser(
        "dev",
        help="a local stack for development: up, down, status, env",
        description="Run pagewire and what it needs on this machine.",
    )
    p.add_argument("action", choices=["up", "down", "status", "env"])
    p.add_argument("--state-dir", default=".dev", help="where the stack keeps its data, logs and pids (.dev)")
    p.add_argument("--no-roles", action="store_true", help="with up: start services and migrate, but no roles")
    p.add_argument(
        "--workers",
        type=_worker_count,
        default=None,
        metavar="N",
        help="with up: worker processes (default: as many as the last up asked for, or 1); a text page is"
        " read on one core, so one a core reads text pages on them all, and OCR threads are shared out among them",
    )
    p.set_defaults(func=_dev)

    from consumer.dropfolder import add_parser as add_dropfolder_parser
    from producer.jobs import add_parser as add_jobs_parser

    add_dropfolder_parser(sub)
    add_jobs_parser(sub)

    from producer.web import add_parser as add_http_parser

    add_http_parser(sub)

    from consumer.evaluate import add_parser as add_eval_parser

    add_eval_parser(sub)

    from consumer.bench import add_parser as add_bench_parser

    add_bench_parser(sub)

    from producer import dead

    dead.add_parser(sub)

    p = sub.add_parser(
        "demo",
        help="dev up, then read a sample PDF and show text and status",
        description="Start the local stack, submit a sample PDF, print its text and status row.",
    )
    p.add_argument("file", nargs="?", help="PDF to read (default: a sample from the corpus or a generated one)")
    p.add_argument("--state-dir", default=".dev")
    p.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pagewire`` command."""
    args = build_parser().parse_args(argv)
    if args.command not in ("planner", "worker", "recorder"):
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from schemas.errors import PagewireError

    try:
        result = args.func(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result)
    except PagewireError as exc:
        print(f"pagewire: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_NOT_FOUND if exc.code in ("job_not_found", "result_not_ready") else EXIT_JOB_FAILED
    except (ConnectionError, OSError) as exc:
        print(f"pagewire: cannot reach a service: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except TimeoutError:
        print("pagewire: timed out", file=sys.stderr)
        return EXIT_JOB_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
