"""The recorder's memory is bounded by its settings, not by the size of the jobs it records.

A real ``pagewire recorder`` process is fed a dense job's page events (text and a
few hundred boxes a page) straight onto the events exchange, records them and
streams the job's results into S3; its peak resident memory (``VmHWM``) is read
from /proc once the job's results are stored.
"""

from __future__ import annotations

import random
import string
import uuid
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.storage import Storage
from schemas.messages import Block, Engine, PageCompleted, to_body
from schemas.settings import Settings
from schemas.tables import jobs
from tests.integration.stack import MakeStack, Stack, peak_rss_mib
from tests.integration.test_recorder_apply import job_events
from tests.integration.test_recorder_survives import publish_events, wait_for

pytestmark = pytest.mark.integration

MIB = 1024 * 1024

BOUNDS = {
    "PAGEWIRE_BATCH_SIZE": "50",
    "PAGEWIRE_BATCH_BYTES": str(MIB // 2),
    "PAGEWIRE_PREFETCH_BYTES": str(MIB),
}
"""Settings that bound the recorder's memory below what one job of the larger size would take."""


def dense_page(job_id: str, page_no: int, rng: random.Random) -> bytes:
    """A dense page's event: 240 boxes in two columns of 120 lines, about 22 KB."""
    blocks = []
    words = []
    for n in range(240):
        column, row = divmod(n, 120)
        text = " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(4))
        words.append(text)
        x0 = 0.05 + 0.47 * column
        y0 = 0.05 + row * 0.0075
        blocks.append(Block(text=text, bbox=(x0, y0, x0 + 0.42, y0 + 0.006), confidence=0.9))
    event = PageCompleted(
        job_id=job_id,
        page_no=page_no,
        text="\n".join(words),
        blocks=blocks,
        confidence=0.9,
        engine=Engine.RAPIDOCR,
        duration_ms=1,
        worker="w",
    )
    return to_body(event)


async def record_dense_job(stack: Stack, channel: AbstractChannel, db: AsyncEngine, pages: int) -> dict[str, Any]:
    """Send a dense job of ``pages`` pages to the stack's recorder; the job's row once its results are stored."""
    job_id = f"dense-{pages}-{uuid.uuid4().hex[:8]}"
    queued, started, _ = job_events(job_id, pages)
    await publish_events(channel, stack, [to_body(queued), to_body(started)])
    rng = random.Random(pages)
    for first in range(1, pages + 1, 100):  # bodies made a hundred at a time: the test's memory stays small too
        bodies = [dense_page(job_id, p, rng) for p in range(first, min(first + 100, pages + 1))]
        await publish_events(channel, stack, bodies)

    async def stored() -> dict[str, Any] | None:
        async with db.connect() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.job_id == job_id))).mappings().one_or_none()
        return dict(row) if row is not None and row["result_keys"] else None

    return await wait_for(f"{job_id}'s results", stored, within_s=300)


@pytest.fixture
async def channel(services: Any) -> Any:
    connection = await aio_pika.connect(services.amqp_url)
    async with connection:
        yield await connection.channel(publisher_confirms=True)


async def test_peak_memory_is_the_same_for_a_100_page_and_a_2000_page_dense_job(
    make_stack: MakeStack, channel: AbstractChannel, db: AsyncEngine
) -> None:
    peaks: dict[int, float] = {}
    for pages in (100, 2000):
        stack = make_stack(roles=("recorder",), **BOUNDS)
        row = await record_dense_job(stack, channel, db, pages)
        assert (row["status"], row["pages_ok"]) == ("completed", pages)
        peaks[pages] = peak_rss_mib(stack.processes["recorder"].pid)
        if pages == 2000:
            storage = Storage(Settings.from_variables(stack.env))
            size = storage.head(row["result_bucket"], row["result_keys"]["json"]).size
            assert size > 100 * MIB  # larger than all the recorder's memory: it went to S3 in parts
            log = stack.log("recorder")
        stack.stop_all()
    print(f"recorder peak RSS: {peaks[100]:.0f} MiB for 100 dense pages, {peaks[2000]:.0f} MiB for 2000")
    # Twenty times the pages, the same memory: within what allocator noise gives between two runs
    assert peaks[2000] <= peaks[100] + 24, peaks
    # And the events, some 22 KB each, held the prefetch under the byte budget instead of 100 of them
    changed = [line for line in log.splitlines() if "prefetch 100 ->" in line]
    assert changed, "the prefetch count never followed the events' size"
    print(changed[0])
