"""A real ``pagewire http`` process beside a stack of real roles, for the HTTP and status page tests."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.integration.stack import REPO_ROOT, Stack
from tools import devstack


@dataclass
class Gateway:
    """A running gateway: its base URL, the API key it takes (an admin key), and any other keys by name."""

    url: str
    api_key: str
    process: subprocess.Popen[bytes]
    log_path: Path
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key} if self.api_key else {}

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        """A client with the main key, or with the key named ``key``."""
        headers = {"X-API-Key": self.keys[key]} if key is not None else self.headers
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=60, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def running_stack(services: Any, log_dir: Path) -> Iterator[Stack]:
    """Planner, worker and recorder on a prefix of their own; the prefix's queues go afterwards."""
    stack = Stack(services.env(f"t{secrets.token_hex(6)}"), log_dir)
    for role in ("planner", "worker", "recorder"):
        stack.start(role)
    try:
        stack.wait_ready(timeout=90)
        yield stack
    finally:
        stack.stop_all()
        devstack.delete_topology(services.amqp_url, stack.topology)


def new_key() -> str:
    return secrets.token_urlsafe(24)


@contextmanager
def running_gateway(
    stack: Stack,
    extra_env: dict[str, str] | None = None,
    *,
    keys: list[dict[str, Any]] | None = None,
    no_auth: bool = False,
    args: tuple[str, ...] = (),
) -> Iterator[Gateway]:
    """``python -m producer.web`` on a free loopback port; stopped by SIGTERM afterwards.

    By default with one admin key (``Gateway.api_key``); ``keys``: these
    entries of ``PAGEWIRE_API_KEYS`` besides, reachable by name through
    ``Gateway.client(name)``; ``no_auth``: no keys at all, run open
    (``PAGEWIRE_HTTP_NO_AUTH``, or ``--no-auth`` when ``args`` has it).
    """
    port = devstack.free_port()
    api_key = "" if no_auth else new_key()
    entries = [] if no_auth else [{"name": "test-admin", "key": api_key, "role": "admin"}, *(keys or [])]
    log_path = stack.log_dir / "http.log"
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGEWIRE_")}
    env.update(stack.env, PAGEWIRE_METRICS_PORT="0", PAGEWIRE_API_KEYS=json.dumps(entries))
    if no_auth and "--no-auth" not in args:
        env["PAGEWIRE_HTTP_NO_AUTH"] = "1"
    env.update(extra_env or {})
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "producer.web", "--port", str(port), *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    named = {e["name"]: e["key"] for e in keys or [] if isinstance(e, dict)}
    gateway = Gateway(f"http://127.0.0.1:{port}", api_key, process, log_path, named)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the gateway exited with {process.returncode}:\n{gateway.log()[-3000:]}")
            try:
                if httpx.get(f"{gateway.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the gateway did not get healthy:\n{gateway.log()[-3000:]}")
            time.sleep(0.2)
        yield gateway
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def read_sse(response: httpx.Response, until: set[str]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Parse a server-sent event stream; stop after an event named in ``until``."""
    name, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data += line.split(":", 1)[1].strip()
        elif line == "" and data:
            yield name, json.loads(data)
            if name in until:
                return
            name, data = "message", ""
