"""The priority gate: one task at a time, a waiting high-priority task first."""

from __future__ import annotations

import asyncio

from consumer.lanes import PriorityGate


async def test_a_waiting_high_task_goes_before_a_waiting_normal_one() -> None:
    gate = PriorityGate()
    order: list[str] = []
    release = asyncio.Event()

    async def run(name: str, high: bool, wait: asyncio.Event | None = None) -> None:
        async with gate.hold(high=high):
            order.append(name)
            if wait is not None:
                await wait.wait()

    first = asyncio.create_task(run("normal-1", False, release))
    await asyncio.sleep(0.01)
    normal = asyncio.create_task(run("normal-2", False))
    await asyncio.sleep(0.01)
    high = asyncio.create_task(run("high", True))
    await asyncio.sleep(0.01)
    assert order == ["normal-1"]  # one at a time

    release.set()
    await asyncio.gather(first, normal, high)
    assert order == ["normal-1", "high", "normal-2"]
