"""``pagewire``: one command, a subcommand per role and per user task.

This is the composition root: the one module that knows every part. It
builds the parser from the parts' own ``add_parser`` functions, starts the
consumer roles (planner, worker, recorder) and runs the database migrations.
Exit codes are those of :mod:`producer.output`: 0 done, 1 a job failed (or
finished with errors), 2 usage error, 3 a service could not be reached, 4 not
found / not ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from adapters.logs import configure_logging
from pagewire import __version__
from producer import cli
from producer.output import EXIT_JOB_FAILED, EXIT_OF_CODE, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, sentence
from schemas.errors import ConfigurationError, PagewireError

EPILOG = """\
examples:
  pagewire dev up                       start a local stack (S3, migrations, planner, worker, recorder)
  eval "$(pagewire dev env)"            point this shell at it
  pagewire submit scan.pdf --wait       queue a PDF, show a progress bar, print the job id
  pagewire status JOB --json            the job's status row
  pagewire result JOB > text.md         the assembled text
  pagewire watch                        every page event, live
  pagewire --api https://ocr.example submit scan.png --wait
                                        the same commands through an HTTP gateway

Configuration comes from PAGEWIRE_* environment variables (see README).
"""


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
    from adapters.database import ensure_database, upgrade
    from schemas.settings import Settings

    url = Settings().database_url.get_secret_value()
    if args.create_database:
        ensure_database(url)
    upgrade(url, args.revision)
    print(f"database migrated to {args.revision}")
    return EXIT_OK


def _worker_count(text: str) -> int:
    from tools.devstack import MAX_WORKERS

    value = int(text)
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_WORKERS}, not {value}")
    return value


def _dev(args: argparse.Namespace) -> int:
    from tools import devcli

    return devcli.run(args)


async def _demo(args: argparse.Namespace) -> int:
    from tools import devcli

    return await devcli.demo(args)


# Commands whose modules are imported only when they run, so that `pagewire --help` and every other
# command start fast, and an install without the development extra runs every role: each module's
# add_parser registers the real subcommand; the others are listed by name and help text alone.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "dropfolder": ("producer.dropfolder", "watch an S3 prefix and make a job of every PDF or image put there"),
    "jobs": ("producer.jobs", "recent jobs, newest first"),
    "gc": ("producer.jobs", "delete finished jobs' sources and results by age, count and size"),
    "http": ("producer.web.command", "serve the HTTP API and the live status page"),
    "eval": ("tools.evaluate", "measure text quality per class of page and engine against the corpus"),
    "bench": ("tools.bench", "measure the stack against the bare engine loop"),
    "dead": ("producer.dead", "inspect, replay or purge dead-lettered messages"),
}
# A module that registers several commands registers them all at once.
_COMMANDS_OF: dict[str, tuple[str, ...]] = {
    name: tuple(other for other, (mod, _) in LAZY_COMMANDS.items() if mod == module)
    for name, (module, _) in LAZY_COMMANDS.items()
}


# Options of the ``pagewire`` command itself that take a value: their value is not the subcommand.
GLOBAL_OPTIONS_WITH_VALUE = ("--api",)


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is neither an option nor an option's value),
    if it is a lazy one."""
    words = iter(argv)
    for word in words:
        if word in GLOBAL_OPTIONS_WITH_VALUE:
            next(words, None)
        elif not word.startswith("-"):
            return word if word in LAZY_COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``pagewire`` parser: every subcommand, with ``command``'s module loaded to parse its arguments."""
    parser = argparse.ArgumentParser(
        prog="pagewire",
        description="pagewire turns PDFs into text at scale: S3 in, RabbitMQ between, PostgreSQL status.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pagewire {__version__}")
    parser.add_argument(
        "--api",
        metavar="URL",
        help="run submit, status, result, watch, cancel, retry and jobs through this pagewire http gateway"
        " (PAGEWIRE_API_URL; its key in PAGEWIRE_API_KEY): no broker, database or S3 access needed",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli.add_parsers(sub)
    for name, func, grace, text in (
        ("planner", _planner, 30.0, "run a planner: JobRequest in, page tasks out"),
        ("worker", _worker, 60.0, "run an OCR worker: one page task at a time (prefetch=1)"),
        ("recorder", _recorder, 30.0, "run the recorder: events into PostgreSQL, results into S3"),
    ):
        p = sub.add_parser(name, help=text, description=sentence(text) + ". Stops cleanly on SIGTERM.")
        p.add_argument(
            "--grace", type=float, default=grace, help=f"seconds to finish work in hand on SIGTERM ({grace:g})"
        )
        p.set_defaults(func=func)

    p = sub.add_parser("migrate", help="create or upgrade the status tables", description="Run the Alembic migrations.")
    p.add_argument(
        "--revision", default="head", help="the Alembic revision to upgrade to (head: the newest; see alembic/versions)"
    )
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

    for name, (module, text) in LAZY_COMMANDS.items():
        if name == command:
            importlib.import_module(module).add_parser(sub)
        elif command is None or name not in _COMMANDS_OF.get(command, ()):
            sub.add_parser(name, help=text, add_help=False)

    p = sub.add_parser(
        "demo",
        help="dev up, then read a sample PDF and show text and status",
        description="Start the local stack, submit a sample PDF, print its text and status row.",
    )
    p.add_argument("file", nargs="?", help="PDF to read (default: a sample from the corpus or a generated one)")
    p.add_argument("--state-dir", default=".dev")
    p.set_defaults(func=_demo)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """``argv`` parsed as the ``pagewire`` command parses it."""
    return build_parser(_command_in(argv)).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pagewire`` command."""
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.command not in ("planner", "worker", "recorder"):
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        # aiormq warns of each channel it closes on a cancelled call (a --wait that timed out): the
        # command says what happened itself.
        logging.getLogger("aiormq").setLevel(logging.ERROR)
    try:
        result = args.func(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result)
    except PagewireError as exc:
        print(f"pagewire: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_OF_CODE.get(exc.code, EXIT_JOB_FAILED)
    except ConfigurationError as exc:
        print(f"pagewire: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (``| head``): nothing more to say, and nowhere to say it.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except TimeoutError:  # before OSError, whose subclass it is
        print("pagewire: timed out", file=sys.stderr)
        return EXIT_JOB_FAILED
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        # A local file named on the command line; the services' own failures come as ConnectionError.
        print(f"pagewire: {exc.filename}: {exc.strerror}" if exc.filename else f"pagewire: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ConnectionError, OSError) as exc:
        print(f"pagewire: cannot reach a service: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # pydantic is imported here, not at the top: every command would pay for it at start.
        from pydantic import ValidationError
        from pydantic_settings import SettingsError

        if isinstance(exc, SettingsError):
            print(f"pagewire: settings: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if not isinstance(exc, ValidationError):
            raise
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "input"
        print(f"pagewire: refused: {where}: {first['msg']}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
