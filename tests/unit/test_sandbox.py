"""The sandbox: a budget kills a runaway call, a crash costs one call, errors come back whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from consumer.sandbox import Sandbox
from schemas.errors import ErrorCode, PermanentError, RetryableError


def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def crash() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def hog(megabytes: int) -> int:
    return len(bytearray(megabytes * 1024 * 1024))


def refuse() -> None:
    raise PermanentError(ErrorCode.NOT_A_PDF, "no header")


async def test_a_call_within_budget_returns_its_value() -> None:
    sandbox = Sandbox("test", memory_mb=0)
    try:
        assert await sandbox.call(slow, 0.01, budget_s=30) == "done"
    finally:
        sandbox.close()


async def test_a_call_past_its_budget_is_killed_and_the_next_one_runs() -> None:
    sandbox = Sandbox("test", memory_mb=0)
    try:
        await sandbox.start()
        with pytest.raises(PermanentError) as caught:
            await sandbox.call(slow, 60, budget_s=0.5)
        assert caught.value.code == ErrorCode.PDF_TOO_COMPLEX
        assert await sandbox.call(slow, 0, budget_s=30) == "done"
        assert sandbox.restarts == 1
    finally:
        sandbox.close()


async def test_a_native_crash_costs_one_retryable_call() -> None:
    sandbox = Sandbox("test", memory_mb=0)
    try:
        with pytest.raises(RetryableError) as caught:
            await sandbox.call(crash, budget_s=30)
        assert caught.value.code == ErrorCode.PROCESS_CRASHED
        assert await sandbox.call(slow, 0, budget_s=30) == "done"
    finally:
        sandbox.close()


async def test_the_memory_cap_turns_a_hog_into_a_permanent_error() -> None:
    sandbox = Sandbox("test", memory_mb=512)
    try:
        assert await sandbox.call(hog, 64, budget_s=30) == 64 * 1024 * 1024
        with pytest.raises(PermanentError) as caught:
            await sandbox.call(hog, 1024, budget_s=30)
        assert caught.value.code == ErrorCode.PDF_TOO_COMPLEX
    finally:
        sandbox.close()


async def test_pagewire_errors_cross_the_process_boundary_intact() -> None:
    sandbox = Sandbox("test", memory_mb=0)
    try:
        with pytest.raises(PermanentError) as caught:
            await sandbox.call(refuse, budget_s=30)
        assert (caught.value.code, caught.value.message) == (ErrorCode.NOT_A_PDF, "no header")
    finally:
        sandbox.close()


REPO = Path(__file__).resolve().parents[2]
PARENT = """
import asyncio, sys
from consumer.sandbox import Sandbox

async def main():
    sandbox = Sandbox("orphan-test", memory_mb=0)
    await sandbox.start()
    print(sandbox.child_pids()[0], flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_a_child_ends_with_its_parent_even_on_kill_9() -> None:
    # Given a process with a started sandbox child
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert os.path.exists(f"/proc/{child}")

        # When the parent is killed outright
        parent.kill()
        parent.wait(timeout=10)

        # Then the child goes too, instead of living on with whatever it had loaded
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{child}")
    finally:
        if parent.poll() is None:
            parent.kill()
