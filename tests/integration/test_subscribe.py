"""Subscribers on the real services: the event iterator and the example page writer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from producer.api import Client
from producer.subscribe import subscribe
from schemas.messages import Engine, Event, JobCompleted, JobOptions, PageCompleted
from tests.integration.stack import REPO_ROOT, Stack, running_stack
from tools.samples import lines, text_pdf

pytestmark = pytest.mark.integration

TEXT = JobOptions(engine=Engine.TEXT)


@pytest.fixture(scope="module")
def stack(services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(services, tmp_path_factory.mktemp("roles")) as stack:
        yield stack


def three_pages() -> bytes:
    return text_pdf([lines([f"Page {n} of the subscriber test.", f"Line two of page {n}."]) for n in (1, 2, 3)])


async def test_the_iterator_yields_a_jobs_page_events_until_it_ends(stack: Stack) -> None:
    job_id = f"sub-{uuid.uuid4()}"
    seen: list[Event] = []
    # Given a subscriber bound before the job is queued
    async with (
        subscribe(stack.settings, job_ids={job_id}, until_done=True) as events,
        Client(stack.settings) as client,
    ):
        # When a three-page PDF is submitted
        await client.submit(three_pages(), job_id=job_id, options=TEXT)

        async def follow() -> None:
            async for event in events:
                seen.append(event)

        await asyncio.wait_for(follow(), 60)

    # Then it saw each page once, with its text, and the completion last
    pages = sorted((e for e in seen if isinstance(e, PageCompleted)), key=lambda e: e.page_no)
    assert [p.page_no for p in pages] == [1, 2, 3]
    assert "Page 2 of the subscriber test." in pages[1].text
    assert isinstance(seen[-1], JobCompleted) and seen[-1].pages_ok == 3
    assert {e.job_id for e in seen} == {job_id}


async def test_an_event_whose_body_raised_comes_again_on_a_durable_queue(stack: Stack) -> None:
    queue = f"{stack.topology.prefix}.test-subscriber"
    job_id = f"sub-{uuid.uuid4()}"
    try:
        # Given a durable subscriber queue, declared before the job runs
        async with subscribe(stack.settings, queue, durable=True, job_ids={job_id}):
            pass
        async with Client(stack.settings) as client:
            await client.submit(three_pages(), job_id=job_id, options=TEXT)
            await client.final_status(job_id, wait_s=60)

        # When the loop body fails on the first page event
        failed_on: list[str] = []
        with pytest.raises(RuntimeError):
            async with subscribe(stack.settings, queue, durable=True, job_ids={job_id}) as events:
                async for event in events:
                    if isinstance(event, PageCompleted):
                        failed_on.append(event.event_id)
                        raise RuntimeError("the database is down")

        # Then the next subscriber on the queue gets that event again, and the rest, up to the end
        # (a handed-back event may come after later ones: redelivery does not keep the order)
        again: list[Event] = []
        async with subscribe(stack.settings, queue, durable=True, job_ids={job_id}) as events:

            async def drain() -> None:
                async for event in events:
                    again.append(event)
                    ids = {e.event_id for e in again}
                    pages = {e.page_no for e in again if isinstance(e, PageCompleted)}
                    if failed_on[0] in ids and pages == {1, 2, 3} and any(isinstance(e, JobCompleted) for e in again):
                        break

            await asyncio.wait_for(drain(), 30)
        assert failed_on[0] in {e.event_id for e in again}
        assert sorted(e.page_no for e in again if isinstance(e, PageCompleted)) == [1, 2, 3]
    finally:
        connection = await aio_pika.connect(stack.env["PAGEWIRE_AMQP_URL"])
        async with connection:
            await (await connection.channel()).queue_delete(queue)


def start_page_writer(stack: Stack, outdir: Path, log: Path) -> subprocess.Popen[bytes]:
    """``python examples/page_writer.py OUTDIR`` as a user runs it, pointed at this stack."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGEWIRE_")} | stack.env
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "examples" / "page_writer.py"), str(outdir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )


async def test_page_writer_writes_each_page_as_it_arrives(stack: Stack, tmp_path: Path) -> None:
    # Given the example page writer, running
    outdir = tmp_path / "pages"
    writer = start_page_writer(stack, outdir, tmp_path / "page_writer.log")
    try:
        assert writer.stdout is not None
        first = await asyncio.wait_for(asyncio.to_thread(writer.stdout.readline), 30)
        assert first.startswith(b"ready"), first

        # When a job runs
        async with Client(stack.settings) as client:
            request = await client.submit(three_pages(), options=TEXT)
            await client.final_status(request.job_id, wait_s=60)

        # Then a file per page appears, with the page's text, and the job's outcome
        folder = outdir / request.job_id
        deadline = time.monotonic() + 30
        while not (folder / "job.json").exists():
            assert time.monotonic() < deadline, "page writer wrote no job.json"
            await asyncio.sleep(0.1)
        assert sorted(p.name for p in folder.glob("page-*")) == ["page-0001.txt", "page-0002.txt", "page-0003.txt"]
        assert "Page 3 of the subscriber test." in (folder / "page-0003.txt").read_text()
        assert '"JobCompleted"' in (folder / "job.json").read_text()
    finally:
        # And SIGTERM stops it cleanly
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(20) == 0
