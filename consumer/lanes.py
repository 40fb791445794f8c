"""The order in which a worker takes tasks from its two lanes.

A worker consumes the normal and the high-priority task queue, each with
prefetch=1, so it may hold one task of each lane. Only one runs at a time; when
the one running ends, a waiting high-priority task goes first. A backlog of
normal tasks therefore delays a high-priority job by at most the task in hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class PriorityGate:
    """One holder at a time; high-priority waiters before normal ones."""

    def __init__(self) -> None:
        self._condition = asyncio.Condition()
        self._busy = False
        self._high_waiting = 0

    @asynccontextmanager
    async def hold(self, *, high: bool) -> AsyncIterator[None]:
        async with self._condition:
            self._high_waiting += high
            try:
                await self._condition.wait_for(lambda: not self._busy and (high or self._high_waiting == 0))
            finally:
                self._high_waiting -= high
            self._busy = True
        try:
            yield
        finally:
            async with self._condition:
                self._busy = False
                self._condition.notify_all()
