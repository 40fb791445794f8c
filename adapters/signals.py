"""Turning SIGTERM and SIGINT into an event a long-running role waits on, so it can drain before it exits."""

from __future__ import annotations

import asyncio
import signal


class Stopper:
    """Turns SIGTERM/SIGINT into an event the role waits on."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.event.set)
