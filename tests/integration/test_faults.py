"""Faults: killed workers, SIGTERM, a cut broker connection, a database outage, a crash after commit.

Every test runs real role processes on a private prefix and checks what a user
sees afterwards: the job ends, every page has exactly one row, the counters
equal the rows, and no event or task is lost.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from consumer.recorder import apply_batch
from producer.api import Client
from schemas.messages import (
    Engine,
    Event,
    JobCompleted,
    JobOptions,
    JobQueued,
    JobStarted,
    PageCompleted,
    Source,
)
from schemas.tables import jobs, pages
from tests.integration.proxy import TcpProxy
from tests.integration.stack import MakeStack, Stack
from tools.samples import DEMO_TEXT, lines, scanned_pdf, text_pdf

DB_OUTAGE_S = float(os.environ.get("PAGEWIRE_TEST_DB_OUTAGE_S", "30"))


def small_scan(n_pages: int) -> bytes:
    """A scan with a few short lines a page: OCR takes a second or two a page here."""
    return scanned_pdf([lines(DEMO_TEXT[i % 5 :] + DEMO_TEXT[: i % 5]) for i in range(n_pages)])


async def page_rows(db: AsyncEngine, job_id: str) -> list[Any]:
    async with db.connect() as conn:
        query = select(pages.c.page_no, pages.c.status, pages.c.event_id).where(pages.c.job_id == job_id)
        return list((await conn.execute(query.order_by(pages.c.page_no))).all())


async def job_row(db: AsyncEngine, job_id: str) -> Any:
    async with db.connect() as conn:
        return (await conn.execute(select(jobs).where(jobs.c.job_id == job_id))).mappings().one()


class Follower:
    """Submits one job and keeps every event of it, in the background."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.events: list[Event] = []
        self.job_id = ""
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def submit(self, pdf: bytes, options: JobOptions) -> None:
        async def run() -> None:
            async with Client(self.stack.settings) as client, client.subscribe() as events:
                request = await client.submit(pdf, options=options)
                self.job_id = request.job_id
                self._ready.set()
                async for event in events.for_jobs({request.job_id}):
                    self.events.append(event)

        self._task = asyncio.create_task(run())
        await self._ready.wait()

    async def wait_for(self, kind: str, count: int = 1, wait_s: float = 120) -> None:
        deadline = time.monotonic() + wait_s
        while sum(e.type == kind for e in self.events) < count:
            if self._task is not None and self._task.done():
                self._task.result()
                raise AssertionError(f"stream ended before {count} {kind}: {[e.type for e in self.events]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} {kind} after {wait_s} s: {[e.type for e in self.events]}")
            await asyncio.sleep(0.05)

    async def done(self, wait_s: float = 180) -> None:
        assert self._task is not None
        await asyncio.wait_for(self._task, wait_s)


async def assert_counted_once(db: AsyncEngine, job_id: str, total: int) -> None:
    rows = await page_rows(db, job_id)
    assert [r.page_no for r in rows] == list(range(1, total + 1))
    assert all(r.status == "completed" for r in rows)
    job = await job_row(db, job_id)
    assert (job["status"], job["pages_ok"], job["pages_failed"], job["total_pages"]) == ("completed", total, 0, total)


@pytest.mark.ocr
async def test_worker_killed_mid_task_loses_nothing(make_stack: MakeStack, db: AsyncEngine) -> None:
    # Given one worker and tasks of two OCR pages each
    stack = make_stack(PAGEWIRE_OCR_PAGES_PER_TASK="2")
    follower = Follower(stack)
    await follower.submit(small_scan(2), JobOptions(engine=Engine.RAPIDOCR))

    # When the worker is killed -9 after page 1 was published and while page 2 is being read
    await follower.wait_for("PageCompleted")
    stack.signal("worker", signal.SIGKILL)
    assert stack.wait_exit("worker") == -signal.SIGKILL
    stack.start("worker", name="worker-2")

    # Then the task is redelivered to the new worker and the job completes, each page counted once
    await follower.done()
    assert follower.events[-1].type == "JobCompleted"
    page_events = [e for e in follower.events if isinstance(e, PageCompleted)]
    assert sorted({e.page_no for e in page_events}) == [1, 2]
    assert len(page_events) >= 3  # page 1 was read twice: before the kill and after the redelivery
    await assert_counted_once(db, follower.job_id, 2)


@pytest.mark.ocr
async def test_sigterm_lets_the_worker_finish_its_page_and_exit_0(make_stack: MakeStack, db: AsyncEngine) -> None:
    stack = make_stack()
    follower = Follower(stack)
    await follower.submit(small_scan(2), JobOptions(engine=Engine.RAPIDOCR))
    await follower.wait_for("JobStarted")
    await asyncio.sleep(0.3)  # the worker has taken page 1

    # When the worker is told to stop mid-page
    stack.signal("worker", signal.SIGTERM)

    # Then it finishes the page in hand, takes no other, and exits 0
    assert stack.wait_exit("worker", timeout=60) == 0
    await follower.wait_for("PageCompleted")
    assert not any(e.type == "JobCompleted" for e in follower.events)
    # and the untouched task waits for the next worker
    stack.start("worker", name="worker-2")
    await follower.done()
    await assert_counted_once(db, follower.job_id, 2)


async def test_sigterm_stops_idle_roles_with_exit_0(make_stack: MakeStack) -> None:
    stack = make_stack()
    for role in ("planner", "worker", "recorder"):
        stack.signal(role, signal.SIGTERM)
    assert [stack.wait_exit(role, timeout=30) for role in ("planner", "worker", "recorder")] == [0, 0, 0]


def via_proxy(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def target_of(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url.replace("+asyncpg", ""))
    return parts.hostname or "127.0.0.1", parts.port or default_port


@pytest.mark.ocr
async def test_broker_connection_cut_every_role_comes_back(
    services: Any, make_stack: MakeStack, db: AsyncEngine
) -> None:
    with TcpProxy(*target_of(services.amqp_url, 5672)) as proxy:
        # Given every role talking to the broker through a proxy
        via = {"PAGEWIRE_AMQP_URL": via_proxy(services.amqp_url, proxy)}
        stack = make_stack(role_env={role: via for role in ("planner", "worker", "recorder")})
        follower = Follower(stack)  # the test's own client talks to the broker directly
        await follower.submit(small_scan(3), JobOptions(engine=Engine.RAPIDOCR))
        await follower.wait_for("PageCompleted")

        # When the connection is cut for a few seconds mid-job
        proxy.cut()
        await asyncio.sleep(3)
        proxy.restore()

        # Then every role is back on its queue and the job finishes with each page once
        stack.wait_ready(timeout=60)
        await follower.done()
        await assert_counted_once(db, follower.job_id, 3)
        stack.stop_all()  # while the proxy still stands


async def test_database_outage_delays_but_loses_nothing(services: Any, make_stack: MakeStack, db: AsyncEngine) -> None:
    with TcpProxy(*target_of(services.database_url, 5432)) as proxy:
        # Given a recorder that reaches PostgreSQL through a proxy, and the database unreachable
        stack = make_stack(roles=())
        db_via_proxy = services.database_url.replace(
            f":{target_of(services.database_url, 5432)[1]}/", f":{proxy.port}/"
        )
        stack.start("planner")
        stack.start("worker")
        stack.start("recorder", extra_env={"PAGEWIRE_DATABASE_URL": db_via_proxy, "PAGEWIRE_DB_RETRY_MAX_S": "2"})
        stack.wait_ready()
        proxy.cut()

        # When a 20-page job flows while the database is away
        follower = Follower(stack)
        pdf = text_pdf([lines([f"page {n} of the outage test"]) for n in range(1, 21)])
        await follower.submit(pdf, JobOptions(engine=Engine.TEXT))
        await follower.wait_for("PageCompleted", count=20)
        await asyncio.sleep(DB_OUTAGE_S)
        assert stack.processes["recorder"].poll() is None  # it waits, it does not die
        assert "database unavailable" in stack.log("recorder")
        proxy.restore()

        # Then the table converges: the job completes with every page once
        await follower.done(wait_s=120)
        await assert_counted_once(db, follower.job_id, 20)
        stack.stop_all()  # while the proxy still stands


async def test_completion_lost_in_a_crash_after_commit_goes_out_once(
    services: Any, make_stack: MakeStack, db: AsyncEngine
) -> None:
    # Given a job the recorder committed as finished, then died before publishing its completion
    stack = make_stack(roles=())
    job_id = f"crash-{secrets.token_hex(4)}"
    source = Source(bucket=services.bucket, key=f"jobs/{job_id}/source.pdf")
    started = JobStarted(
        job_id=job_id, source=source, options=JobOptions(), total_pages=1, first_page=1, last_page=1, tasks=1
    )
    page = PageCompleted(
        job_id=job_id, page_no=1, text="hello", confidence=1, engine=Engine.TEXT, duration_ms=1, worker="w"
    )
    async with db.begin() as conn:
        finished = await apply_batch(
            conn, [JobQueued(job_id=job_id, source=source, options=JobOptions()), started, page]
        )
    assert finished == [job_id]
    assert (await job_row(db, job_id))["completion_published_at"] is None

    # The client declares the topology, so the subscriber can bind before the recorder starts.
    async with Client(stack.settings) as client, client.subscribe() as events:
        completions: list[JobCompleted] = []

        async def collect() -> None:
            async for event in events:
                if isinstance(event, JobCompleted) and event.job_id == job_id:
                    completions.append(event)

        collector = asyncio.create_task(collect())
        # When a recorder starts (twice: a second start must not send it again)
        stack.start("recorder")
        stack.wait_ready({"recorder": stack.topology.recorder_queue})
        for _ in range(200):
            if completions and (await job_row(db, job_id))["completion_published_at"] is not None:
                break
            await asyncio.sleep(0.05)
        stack.signal("recorder", signal.SIGTERM)
        assert stack.wait_exit("recorder") == 0
        stack.start("recorder", name="recorder-2")
        stack.wait_ready({"recorder": stack.topology.recorder_queue})
        await asyncio.sleep(2)
        collector.cancel()

    # Then the completion went out exactly once, with the result written
    assert len(completions) == 1
    row = await job_row(db, job_id)
    assert row["result_keys"] == completions[0].result_keys and set(row["result_keys"]) == {"md", "json"}


async def test_retryable_failure_is_retried_then_dead_lettered_and_named(
    services: Any, make_stack: MakeStack, db: AsyncEngine, tmp_path: Path
) -> None:
    # Given a worker that cannot reach S3 (a retryable fault), and a delivery limit of 2; on a host
    # of its own, as far as its PDF cache goes (on the planner's it would read the planner's copy)
    stack = make_stack(roles=(), PAGEWIRE_DELIVERY_LIMIT="2")
    stack.start("planner")
    stack.start("recorder")
    stack.start(
        "worker",
        extra_env={"PAGEWIRE_S3_ENDPOINT_URL": "http://127.0.0.1:9", "PAGEWIRE_CACHE_DIR": str(tmp_path / "cache")},
    )
    stack.wait_ready()

    # When a one-page job arrives
    follower = Follower(stack)
    await follower.submit(text_pdf([lines(["retry me"])]), JobOptions(engine=Engine.TEXT))
    await follower.done(wait_s=120)

    # Then it was tried 3 times, then given up: the job ends naming the page and the code
    job = await job_row(db, follower.job_id)
    assert (job["status"], job["pages_ok"], job["pages_failed"]) == ("completed_with_errors", 0, 1)
    async with db.connect() as conn:
        page = (await conn.execute(select(pages).where(pages.c.job_id == follower.job_id))).mappings().one()
    assert (page["page_no"], page["status"], page["error_code"], page["attempts"]) == (
        1,
        "failed",
        "storage_unavailable",
        3,
    )
    assert stack.log("worker").count("retrying") == 2
    # and the task waits in the dead-letter queue with the reason attached
    import aio_pika

    connection = await aio_pika.connect(services.amqp_url)
    async with connection:
        channel = await connection.channel()
        dead = await channel.get_queue(stack.topology.dead_queue)
        message = None
        for _ in range(50):
            message = await dead.get(fail=False)
            if message:
                break
            await asyncio.sleep(0.1)
        assert message is not None
        headers = message.headers or {}
        assert headers["x-pagewire-error-code"] == "storage_unavailable"
        assert headers["x-pagewire-queue"] == stack.topology.tasks_queue
        await message.nack(requeue=True)


def sandbox_children(pid: int) -> list[int]:
    """The worker's page process: its spawned child that is not multiprocessing's resource tracker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and "multiprocessing" in cmdline and "resource_tracker" not in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.ocr
async def test_a_native_crash_costs_one_attempt_not_the_worker(make_stack: MakeStack, db: AsyncEngine) -> None:
    stack = make_stack()
    worker_pid = stack.processes["worker"].pid
    (child,) = sandbox_children(worker_pid)

    # When the process reading the page dies of a segfault mid-page
    follower = Follower(stack)
    await follower.submit(small_scan(1), JobOptions(engine=Engine.RAPIDOCR))
    await follower.wait_for("JobStarted")
    await asyncio.sleep(0.5)
    os.kill(child, signal.SIGSEGV)

    # Then that attempt is lost, the task comes back, and the same worker reads the page
    await follower.done()
    await assert_counted_once(db, follower.job_id, 1)
    assert stack.processes["worker"].poll() is None
    assert "the child process died" in stack.log("worker")
    assert sandbox_children(worker_pid) not in ([], [child])


@pytest.mark.ocr
@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs the broker's rabbitmqctl on this machine")
async def test_broker_stopped_and_started_every_role_comes_back(
    services: Any, make_stack: MakeStack, db: AsyncEngine
) -> None:
    if "127.0.0.1" not in services.amqp_url and "localhost" not in services.amqp_url:
        pytest.skip("the broker is not this machine's")
    stack = make_stack()
    follower = Follower(stack)
    await follower.submit(small_scan(3), JobOptions(engine=Engine.RAPIDOCR))
    await follower.wait_for("PageCompleted")

    # When the broker application stops and starts again mid-job
    await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=60)
    try:
        await asyncio.sleep(2)
    finally:
        await asyncio.to_thread(
            subprocess.run, ["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120
        )

    # Then every role is back on its queue (consumer counts read afresh) and the job finishes, once each
    stack.wait_ready(timeout=90)
    # the test's own subscriber queue was exclusive and is gone with the old connection: read the table
    for _ in range(1200):
        if (await job_row(db, follower.job_id))["status"] == "completed":
            break
        await asyncio.sleep(0.1)
    await assert_counted_once(db, follower.job_id, 3)
