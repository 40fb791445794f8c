"""pdfium and OCR in a child process, with a time budget and a memory cap.

A PDF can hold a page whose content stream inflates 650-fold into operators
that pdfium parses for minutes with gigabytes (see docs/errors.md), and
native code can crash. In the consumer's own process either would stall its
heartbeats or take it down for good. Here every such call runs in one child
process (spawned, so it shares nothing with the parent but its arguments):

- a call over its time budget kills the child: :class:`PermanentError`
  ``pdf_too_complex`` (the same input would do it again);
- a child that dies (a segfault, or the kernel's OOM killer) costs that call:
  :class:`RetryableError` ``process_crashed``, so the message is retried and,
  should it crash every time, dead-lettered with the reason;
- ``RLIMIT_AS`` caps the child's address space, so a bomb meets a
  ``MemoryError`` in the child rather than the machine's OOM killer.

The next call starts a fresh child. Only small results cross the process
boundary (text and boxes); page images stay in the child.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import resource
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from schemas.errors import ErrorCode, PermanentError, RetryableError

log = logging.getLogger(__name__)

T = TypeVar("T")


def _limit_memory(memory_mb: int) -> None:
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def _die_with(parent: int) -> None:
    """End this child when ``parent`` ends, however it ends (kill -9 included): on Linux the kernel
    sends SIGKILL on the parent's death. Without it a killed role left its child, models loaded
    (some 400 MB), running for good."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)


def _init_child(memory_mb: int, setup: Callable[..., None] | None, setup_args: tuple[Any, ...], parent: int) -> None:
    _die_with(parent)
    _limit_memory(memory_mb)
    if setup is not None:
        setup(*setup_args)


def _ping() -> bool:
    return True


class Sandbox:
    """One child process that runs blocking calls with a budget; restarted after a kill or crash."""

    def __init__(
        self,
        name: str,
        *,
        memory_mb: int,
        setup: Callable[..., None] | None = None,
        setup_args: tuple[Any, ...] = (),
    ) -> None:
        self.name = name
        self.memory_mb = memory_mb
        self.setup = setup
        self.setup_args = setup_args
        self.restarts = 0
        self._pool = self._new_pool()
        # One call at a time: the budget then times the call alone, and a kill
        # never takes down a call that was only waiting its turn.
        self._lock = asyncio.Lock()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_child,
            initargs=(self.memory_mb, self.setup, self.setup_args, os.getpid()),
        )

    def child_pids(self) -> list[int]:
        """The pid of the child (empty before its first call); for tests and diagnostics."""
        processes = getattr(self._pool, "_processes", None) or {}
        return [int(pid) for pid in processes]

    def _restart(self) -> None:
        processes = getattr(self._pool, "_processes", None) or {}
        for process in list(processes.values()):
            process.kill()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()
        self.restarts += 1

    async def start(self, budget_s: float = 120.0) -> None:
        """Start the child and run its setup now (model loading), not on the first real call."""
        await self.call(_ping, budget_s=budget_s)

    async def call(self, fn: Callable[..., T], *args: Any, budget_s: float) -> T:
        """Run ``fn(*args)`` in the child; ``fn`` and its arguments must pickle."""
        async with self._lock:
            return await self._call(fn, args, budget_s)

    async def _call(self, fn: Callable[..., T], args: tuple[Any, ...], budget_s: float) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, fn, *args)
        try:
            return await asyncio.wait_for(future, budget_s)
        except TimeoutError:
            self._restart()
            log.warning("%s: a call ran past its %.0f s budget; child restarted", self.name, budget_s)
            raise PermanentError(
                ErrorCode.PDF_TOO_COMPLEX, f"took longer than its budget of {budget_s:g} s (a too complex page?)"
            ) from None
        except BrokenProcessPool:
            self._restart()
            log.warning("%s: the child process died; restarted", self.name)
            raise RetryableError(
                ErrorCode.PROCESS_CRASHED, "the page process died (a native crash, or killed for memory)"
            ) from None
        except MemoryError:
            self._restart()
            raise PermanentError(
                ErrorCode.PDF_TOO_COMPLEX, f"needs more than the {self.memory_mb} MB memory budget"
            ) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
