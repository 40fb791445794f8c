"""``pagewire dev ...`` and ``pagewire demo``: the local stack from the command line."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from producer.output import EXIT_UNREACHABLE
from schemas.settings import ClientSettings
from tools import devstack


def _stack_failed(exc: devstack.DevStackError) -> int:
    # What failed to start is the user's next step (a port, a missing package, a role's log), not a traceback.
    print(f"pagewire: the local stack: {exc}", file=sys.stderr)
    return EXIT_UNREACHABLE


def _print_status(console: Console, state_dir: Path) -> bool:
    table = Table("part", "pid", "running", "detail", title="pagewire dev stack")
    healthy = True
    for row in devstack.dev_status(state_dir):
        healthy &= row.running
        table.add_row(row.name, str(row.pid or "-"), "[green]yes" if row.running else "[red]no", row.detail)
    console.print(table)
    return healthy


def run(args: argparse.Namespace) -> int:
    """Dispatch ``pagewire dev up|down|status|env``; a part that cannot start is one line on stderr."""
    try:
        return _run(args)
    except devstack.DevStackError as exc:
        return _stack_failed(exc)


def _run(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    console = Console(stderr=True)
    if args.action == "up":
        with console.status("starting the local stack (services, migrations, roles)"):
            devstack.dev_up(state_dir, roles=not args.no_roles, workers=args.workers)
        _print_status(console, state_dir)
        console.print('point a shell at it with: eval "$(pagewire dev env)"; stop it with: pagewire dev down')
        return 0
    if args.action == "down":
        for line in devstack.dev_down(state_dir):
            console.print(line)
        return 0
    if args.action == "status":
        return 0 if _print_status(console, state_dir) else 1
    env = devstack.dev_env(state_dir)
    for key, value in sorted({**env, **aws_env(env)}.items()):
        print(f"export {key}={shlex.quote(value)}")
    return 0


def aws_env(env: dict[str, str]) -> dict[str, str]:
    """The AWS variables of the stack's S3, so that ``aws s3 cp`` (and boto3) in the same shell reach it,
    not AWS; empty where the stack uses AWS S3 itself (no endpoint of its own)."""
    if "PAGEWIRE_S3_ENDPOINT_URL" not in env:
        return {}
    return {
        "AWS_ENDPOINT_URL": env["PAGEWIRE_S3_ENDPOINT_URL"],
        "AWS_ACCESS_KEY_ID": env["PAGEWIRE_S3_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": env["PAGEWIRE_S3_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": env["PAGEWIRE_S3_REGION"],
    }


async def demo(args: argparse.Namespace) -> int:
    """Bring the stack up, read one PDF end to end, print its text and status row."""
    from producer.api import Client
    from producer.progress import follow
    from tools.samples import mixed_sample

    console = Console(stderr=True)
    state_dir = Path(args.state_dir)
    try:
        with console.status("starting the local stack (S3, migrations, planner, worker, recorder)"):
            state = await asyncio.to_thread(devstack.dev_up, state_dir)
    except devstack.DevStackError as exc:
        return _stack_failed(exc)
    _print_status(console, state_dir)
    if args.file:
        name, data = Path(args.file).name, await asyncio.to_thread(Path(args.file).read_bytes)
    else:
        name, data = "sample.pdf (page 1 born-digital, page 2 scanned)", mixed_sample()
    async with Client(ClientSettings.from_variables(state.env)) as client, client.subscribe() as events:
        request = await client.submit(data, submitted_by="pagewire demo")
        console.print(f"submitted {name} as job {request.job_id}")
        finals = await asyncio.wait_for(follow(events, {request.job_id: name}, quiet=False), 600)
        if finals.get(request.job_id) == "JobCompleted":
            console.rule("result.md")
            print((await client.result(request.job_id, "md")).decode())
        row = await client.final_status(request.job_id)
    console.rule("status row (the job_progress view, with the job's result keys)")
    for key, value in row.items():
        print(f"{key:<17} {value if value is not None else '-'}")
    console.print("\nthe stack keeps running; stop it with: [bold]pagewire dev down[/] (or make down)")
    return 0 if row["status"] == "completed" else 1
