"""The recorder's batch pipeline without a database: the overlap, and what is prepared before a transaction."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from consumer import recorder
from consumer.recorder import (
    PAUSE_EVERY,
    merge_page_events,
    pipelined,
    prepare_batch,
    prepare_bodies,
    prepare_events,
)
from consumer.recorder.prepare import PAGE_COLUMNS, page_row
from schemas.errors import ErrorCode
from schemas.messages import Engine, Event, JobOptions, JobStarted, PageCompleted, PageFailed, Source
from schemas.settings import RecorderSettings

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def listed(items: list[int]) -> AsyncIterator[int]:
    for item in items:
        yield item


async def test_batches_are_applied_in_order_one_at_a_time_each_prepared_while_the_last_applies() -> None:
    log: list[str] = []
    applying = 0

    async def prepare(n: int) -> int:
        log.append(f"prepare {n}")
        await asyncio.sleep(0.001 * (n % 3))  # batches take different times, as real ones do
        return n

    async def apply(n: int) -> None:
        nonlocal applying
        applying += 1
        assert applying == 1, "two batches applied at once"
        log.append(f"apply {n}")
        await asyncio.sleep(0.01 * ((n + 1) % 3) + 0.002)
        log.append(f"applied {n}")
        applying -= 1

    await pipelined(listed(list(range(6))), prepare, apply)

    assert [e for e in log if e.startswith("applied")] == [f"applied {n}" for n in range(6)]
    for n in range(5):
        # Batch n+1 was prepared after batch n began and before it ended: they overlapped.
        assert log.index(f"apply {n}") < log.index(f"prepare {n + 1}") < log.index(f"applied {n}")


async def test_a_failed_apply_is_raised_while_the_next_batch_is_still_awaited() -> None:
    async def batches() -> AsyncIterator[int]:
        yield 1
        await asyncio.Event().wait()  # nothing more arrives
        yield 2

    async def prepare(n: int) -> int:
        return n

    async def apply(n: int) -> None:
        raise ValueError(f"batch {n}")

    with pytest.raises(ValueError, match="batch 1"):
        await asyncio.wait_for(pipelined(batches(), prepare, apply), 5)


async def test_an_error_preparing_cancels_the_apply_under_way() -> None:
    cancelled = asyncio.Event()

    async def prepare(n: int) -> int:
        if n == 2:
            await asyncio.sleep(0.01)
            raise RuntimeError("prepare 2")
        return n

    async def apply(n: int) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # a rollback, say
            cancelled.set()
            raise

    with pytest.raises(RuntimeError, match="prepare 2"):
        await asyncio.wait_for(pipelined(listed([1, 2]), prepare, apply), 5)
    assert cancelled.is_set()  # and waited for, not left running


def page(page_no: int, **extra: object) -> PageCompleted:
    return PageCompleted(
        job_id="j", page_no=page_no, text=f"p{page_no}", confidence=1.0, engine=Engine.TEXT, duration_ms=1, worker="w"
    ).model_copy(update=extra)


def failed(page_no: int, *, final: bool, attempt: int = 1) -> PageFailed:
    return PageFailed(
        job_id="j",
        page_no=page_no,
        error_code=ErrorCode.OCR_FAILED,
        message=f"attempt {attempt}",
        attempt=attempt,
        final=final,
        worker="w",
    )


def a_mixed_batch() -> list[Event]:
    one, two = page(1), page(2)
    return [
        failed(1, final=False),
        one,
        page(1, event_id=str(uuid.uuid4()), text="again"),  # a second worker's reading of page 1
        failed(2, final=False, attempt=1),
        failed(2, final=False, attempt=2),
        two,
        one,  # delivered twice
        failed(3, final=True),
        JobStarted(
            job_id="j",
            source=Source(bucket="bucket", key="k"),
            options=JobOptions(),
            total_pages=3,
            first_page=1,
            last_page=3,
            tasks=1,
        ),
    ]


def test_prepared_rows_are_the_rows_apply_batch_made_before() -> None:
    events = a_mixed_batch()
    prepared = prepare_batch(events)

    # What apply_batch did itself (all events new): dedupe by id, merge the page events, page_row each.
    first: dict[str, Event] = {}
    for event in events:
        first.setdefault(event.event_id, event)
    unique = list(first.values())
    merged = merge_page_events([e for e in unique if isinstance(e, PageCompleted | PageFailed)])
    rows = [page_row(e, NOW) for e in merged]
    expected = {f"{name}_list": [r[name] for r in rows] for name in PAGE_COLUMNS if name != "updated_at"}

    assert [e.event_id for e in prepared.events] == [e.event_id for e in unique]
    assert prepared.merged == merged
    assert prepared.columns == expected
    assert prepared.columns["text_list"] == ["p1", "p2", None]  # first of equals stays; rank wins
    assert set(prepared.rows) == {e.event_id for e in unique if isinstance(e, PageCompleted | PageFailed)}
    assert prepared.received == {"PageFailed": 4, "PageCompleted": 4, "JobStarted": 1}


async def test_preparing_lets_the_event_loop_run_every_few_dozen_events() -> None:
    events = [page(n) for n in range(1, 201)]
    bodies = [e.model_dump_json().encode() for e in events]
    turns = 0
    stop = False

    async def count_turns() -> None:
        nonlocal turns
        while not stop:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    await asyncio.sleep(0)
    try:
        before = turns
        await prepare_events(events)
        from_events = turns - before
        before = turns
        await prepare_bodies(bodies, 1 << 20)
        from_bodies = turns - before
    finally:
        stop = True
        await counter
    assert from_events >= len(events) // PAUSE_EVERY - 1
    assert from_bodies >= len(bodies) // PAUSE_EVERY - 1


async def test_bodies_that_are_no_event_are_returned_by_index_and_the_rest_prepared() -> None:
    good = [page(1), page(2)]
    bodies = [good[0].model_dump_json().encode(), b"{not json", good[1].model_dump_json().encode(), b"[]"]

    prepared, poison = await prepare_bodies(bodies, 1 << 20)

    assert sorted(poison) == [1, 3]
    assert all(exc.code == ErrorCode.MALFORMED_MESSAGE for exc in poison.values())
    assert [e.event_id for e in prepared.events] == [e.event_id for e in good]


def test_the_pause_is_small_enough_to_matter() -> None:
    # A batch is 500 events; pausing only every batch would leave nothing to overlap.
    assert 1 <= recorder.PAUSE_EVERY <= 100


def test_the_recorder_collects_its_oldest_generation_less_often() -> None:
    before = recorder.collect_less_often()
    try:
        assert gc.get_threshold() == recorder.GC_THRESHOLDS
        assert recorder.GC_THRESHOLDS[2] > 10  # Python's default ran a full collection about once a batch
    finally:
        gc.set_threshold(*before)


def _gatherer(batch_size: int, wait_ms: int, max_wait_ms: int, batch_bytes: int = 1 << 20) -> recorder.Recorder:
    """A recorder with nothing behind it: only its inbox and its gathering are used."""
    settings = RecorderSettings(
        batch_size=batch_size, batch_wait_ms=wait_ms, batch_max_wait_ms=max_wait_ms, batch_bytes=batch_bytes
    )
    return recorder.Recorder(settings, cast(Any, None), cast(Any, None), cast(Any, None))


class _Delivery(int):
    """A delivery numbered ``n``, with a body of ``size`` bytes, as the gathering sees one."""

    size = 10

    @property
    def body(self) -> bytes:
        return b"x" * self.size


async def test_a_lone_event_is_applied_once_no_other_follows_within_the_wait() -> None:
    rec = _gatherer(batch_size=500, wait_ms=50, max_wait_ms=5_000)
    rec.inbox.put_nowait(cast(Any, _Delivery(0)))
    started = asyncio.get_running_loop().time()

    batch: list[Any] = await asyncio.wait_for(rec._gather(), 5.0)

    assert batch == [0]
    assert asyncio.get_running_loop().time() - started < 2.5  # the gap closed it, not the longest wait


async def test_a_steady_stream_fills_a_batch_until_the_longest_wait_then_the_next_batch_goes_on() -> None:
    # Events every 20 ms, a gap of 200 ms: only the longest wait (600 ms) or the size closes a batch.
    rec = _gatherer(batch_size=500, wait_ms=200, max_wait_ms=600)

    async def stream() -> None:
        for n in range(75):  # some 1.5 s of events
            rec.inbox.put_nowait(cast(Any, _Delivery(n)))
            await asyncio.sleep(0.02)

    feeding = asyncio.create_task(stream())
    first: list[Any] = await asyncio.wait_for(rec._gather(), 10.0)
    second: list[Any] = await asyncio.wait_for(rec._gather(), 10.0)
    await feeding

    assert 15 < len(first) < 75  # well over a gap's worth (10), and closed before the stream ended
    assert second[0] == first[-1] + 1  # nothing lost or reordered between batches
    assert first == list(range(len(first)))


async def test_a_batch_closes_at_its_size() -> None:
    rec = _gatherer(batch_size=2, wait_ms=5_000, max_wait_ms=5_000)
    for item in range(3):
        rec.inbox.put_nowait(cast(Any, _Delivery(item)))

    batch: list[Any] = await asyncio.wait_for(rec._gather(), 1.0)

    assert batch == [0, 1]


async def test_a_batch_closes_at_its_bytes_and_an_event_larger_than_them_still_goes() -> None:
    rec = _gatherer(batch_size=500, wait_ms=50, max_wait_ms=5_000, batch_bytes=1024)
    for item in range(3):
        rec.inbox.put_nowait(cast(Any, _Delivery(item)))  # 10 bytes each
    large = _Delivery(3)
    large.size = 5000
    rec.inbox.put_nowait(cast(Any, large))
    rec.inbox.put_nowait(cast(Any, _Delivery(4)))
    rec.inbox.put_nowait(cast(Any, _Delivery(5)))

    first: list[Any] = await asyncio.wait_for(rec._gather(), 1.0)
    second: list[Any] = await asyncio.wait_for(rec._gather(), 1.0)

    assert (first, second) == ([0, 1, 2, 3], [4, 5])


async def test_jobs_that_finish_together_are_finished_a_few_at_a_time_and_each_once() -> None:
    # Given a batch that finished twenty jobs at once, each taking a while to assemble and store
    rec = _gatherer(batch_size=500, wait_ms=20, max_wait_ms=100)
    finished: list[str] = []
    running = peak = 0

    async def finish(job_id: str) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.005)
        finished.append(job_id)
        running -= 1

    rec.finisher.finish = finish  # type: ignore[method-assign]
    jobs = [f"job-{n}" for n in range(20)]
    for job_id in jobs + jobs[:5]:  # five of them named twice (a sweep while they are in hand)
        rec.finisher.finish_later(job_id)
    await asyncio.wait_for(asyncio.gather(*rec.finisher.background), 5.0)

    # Then no more than FINISHING_AT_ONCE hold a connection at a time, and every job is finished once
    assert peak == recorder.FINISHING_AT_ONCE
    assert sorted(finished) == sorted(jobs)
    assert not rec.finisher.finishing
