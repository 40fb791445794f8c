"""Batches in a pipeline: the next one is prepared while the one before is in its transaction."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

# A parsed page event is many objects the garbage collector tracks (the models and their dicts),
# and they live until their batch is applied. With Python's default thresholds (700, 10, 10) a full
# collection, over every object in the process, runs about once a batch, a large share of the
# recorder's CPU (docs/benchmarks.md). Cycles that live long enough to reach the oldest generation
# are freed later; others are not affected.
GC_THRESHOLDS = (700, 10, 100)


def collect_less_often() -> tuple[int, int, int]:
    """Set :data:`GC_THRESHOLDS` for this process; returns the thresholds before."""
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    return before


B = TypeVar("B")
P = TypeVar("P")


async def pipelined(
    batches: AsyncIterator[B],
    prepare: Callable[[B], Awaitable[P]],
    apply: Callable[[P], Coroutine[Any, Any, None]],
) -> None:
    """Apply every batch of ``batches`` in order, one at a time, preparing the next meanwhile.

    While batch N is applied (waiting on PostgreSQL for the most part), batch N+1 is taken from
    ``batches`` and prepared; it is applied once N's apply has returned. An exception from
    ``apply`` is raised here as soon as it happens, even while the next batch is awaited; one
    from ``batches`` or ``prepare`` too, and the apply under way is then cancelled (as it is
    when this is cancelled).
    """

    async def take() -> list[P]:
        """The next batch, prepared; none at the end."""
        try:
            batch = await anext(batches)
        except StopAsyncIteration:
            return []
        return [await prepare(batch)]

    applying: asyncio.Task[None] | None = None
    taking: asyncio.Task[list[P]] | None = None
    try:
        while True:
            taking = asyncio.create_task(take())
            if applying is not None:
                await asyncio.wait({taking, applying}, return_when=asyncio.FIRST_COMPLETED)
                if applying.done():
                    applying.result()  # a failed apply is raised now, not when the next batch comes
                    applying = None
            ready = await taking
            taking = None
            if applying is not None:
                await applying
                applying = None
            if not ready:
                return
            applying = asyncio.create_task(apply(ready[0]))
    finally:
        left = [t for t in (taking, applying) if t is not None and not t.done()]
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left)
