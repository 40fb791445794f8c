"""Real role processes for integration tests: start, stop, kill, and run jobs through them.

Each role runs as its own ``python -m pagewire ROLE`` process, exactly as an
operator runs it, so a test can SIGTERM or kill -9 one of them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producer.api import Client
from schemas.messages import TERMINAL_EVENTS, Event, JobOptions
from schemas.names import Topology
from schemas.settings import ClientSettings
from tools import devstack

REPO_ROOT = Path(__file__).resolve().parents[2]
ROLES = ("planner", "worker", "recorder")


@dataclass
class Stack:
    """Role processes sharing one environment (one prefix)."""

    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    reaped: set[str] = field(default_factory=set)  # ended on purpose: wait_exit saw them go

    @property
    def topology(self) -> Topology:
        return Topology(prefix=self.env["PAGEWIRE_PREFIX"])

    @property
    def settings(self) -> ClientSettings:
        return ClientSettings.from_variables(self.env)

    def start(self, role: str, *, name: str | None = None, extra_env: dict[str, str] | None = None) -> None:
        """Start a role process (``name`` tells two of a kind apart)."""
        name = name or role
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAGEWIRE_")}
        env.update(self.env, PAGEWIRE_LOG_LEVEL="INFO", PAGEWIRE_METRICS_PORT="0", **(extra_env or {}))
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "pagewire", role],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, roles: dict[str, str] | None = None, timeout: float = 60.0) -> None:
        """Wait until each queue has at least one consumer (role name -> queue)."""
        queues = roles or devstack.role_queues(self.topology)
        deadline = time.monotonic() + timeout
        while True:
            counts = devstack.consumer_counts(self.env["PAGEWIRE_AMQP_URL"], list(queues.values()))
            if all(counts.get(q) for q in queues.values()):
                return
            for name, proc in self.processes.items():
                if name not in self.reaped and proc.poll() is not None:
                    raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"roles not ready after {timeout} s: {counts}")
            time.sleep(0.2)

    def start_roles(self, roles: tuple[str, ...] = ROLES, role_env: dict[str, dict[str, str]] | None = None) -> None:
        """Start ``roles`` (``role_env`` adds variables for one role) and wait until each consumes."""
        for role in roles:
            self.start(role, extra_env=(role_env or {}).get(role))
        self.wait_ready({role: devstack.role_queues(self.topology)[role] for role in roles}, timeout=90)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.processes[name].send_signal(sig)

    def wait_exit(self, name: str, timeout: float = 60.0) -> int:
        code = self.processes[name].wait(timeout)
        self.reaped.add(name)
        return code

    def stop_all(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def peak_rss_mib(pid: int) -> float:
    """The most resident memory process ``pid`` has held so far (``VmHWM``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


MakeStack = Callable[..., Stack]
"""The ``make_stack`` fixture: ``make_stack(roles=..., role_env=..., **PAGEWIRE_VARS) -> Stack``."""


@dataclass
class JobRun:
    """What a test sees of one job: its events in arrival order and its final status row."""

    job_id: str
    events: list[Event]
    status: dict[str, object]

    def of_type(self, name: str) -> list[Event]:
        return [e for e in self.events if e.type == name]


def pagewire_command(*args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """The ``pagewire`` command as a user runs it: a process of its own, with ``env``'s variables and no
    other ``PAGEWIRE_*`` of this process."""
    return subprocess.run(
        [sys.executable, "-m", "pagewire", *args],
        cwd=REPO_ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("PAGEWIRE_")} | env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def run_job(stack: Stack, pdf: bytes, *, options: JobOptions | None = None, wait_s: float = 180.0) -> JobRun:
    """Submit ``pdf`` and follow its events on a separate subscriber queue until the job ends."""
    async with Client(stack.settings) as client, client.subscribe() as events:
        request = await client.submit(pdf, options=options)
        seen: list[Event] = []

        async def collect() -> None:
            async for event in events.for_jobs({request.job_id}):
                seen.append(event)

        await asyncio.wait_for(collect(), wait_s)
        assert isinstance(seen[-1], TERMINAL_EVENTS)
        status = await client.final_status(request.job_id)
    return JobRun(request.job_id, seen, status)


@contextmanager
def running_stack(
    services: Any,
    log_dir: Path,
    *,
    roles: tuple[str, ...] = ROLES,
    role_env: dict[str, dict[str, str]] | None = None,
    extra_queues: tuple[str, ...] = (),
) -> Iterator[Stack]:
    """Role processes on a fresh prefix, ready to consume; stopped and their queues deleted afterwards.

    ``role_env`` adds variables for one role (``{"planner": {"PAGEWIRE_MAX_PAGES": "50"}}``);
    ``extra_queues`` names queues of the prefix beyond the topology's (``dropfolder`` for
    ``{prefix}.dropfolder``), to delete too.
    """
    stack = Stack(services.env(f"t{secrets.token_hex(6)}"), log_dir)
    try:
        stack.start_roles(roles, role_env)
        yield stack
    finally:
        stack.stop_all()
        prefix = stack.topology.prefix
        devstack.delete_topology(services.amqp_url, stack.topology, [f"{prefix}.{name}" for name in extra_queues])
