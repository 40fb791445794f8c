"""The drop folder on the real services: each PDF put in the inbox becomes exactly one job.

Watchers run as real processes (``python -m producer.dropfolder``, the same
code ``pagewire dropfolder`` runs) or in-process where a test needs to stop
one at an exact step. Every test has its own inbox, processed and failed
prefixes in the shared bucket; one stack of planner, worker and recorder
serves the module. JobRequests are counted on a queue of the test's own,
bound to the jobs exchange beside the planner's.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.amqp import Publisher, declare_topology
from adapters.storage import Storage
from consumer.service import Stopper
from producer.dropfolder import (
    META_ERROR_CODE,
    META_JOB_ID,
    Claims,
    DropFolderSettings,
    Inbox,
    Watcher,
    dropfolder_claims,
)
from schemas.messages import JobRequest, parse_as
from schemas.names import JOB_ROUTING_KEY
from schemas.tables import jobs
from tests.integration.stack import REPO_ROOT, Stack, running_stack
from tools import devstack
from tools.samples import lines, text_pdf

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(services, tmp_path_factory.mktemp("roles"), extra_queues=("dropfolder",)) as stack:
        yield stack


class Folder:
    """One test's inbox, processed and failed prefixes, its watcher settings and a JobRequest tap."""

    def __init__(self, stack: Stack, tmp_path: Path) -> None:
        self.stack = stack
        self.tmp_path = tmp_path
        self.root = f"df-{secrets.token_hex(4)}/"
        self.env = dict(
            stack.env,
            PAGEWIRE_INBOX_PREFIX=f"{self.root}inbox/",
            PAGEWIRE_PROCESSED_PREFIX=f"{self.root}processed/",
            PAGEWIRE_FAILED_PREFIX=f"{self.root}failed/",
            PAGEWIRE_MIN_AGE_S="0",
            PAGEWIRE_SCAN_INTERVAL_S="0.3",
            PAGEWIRE_CLAIM_TIMEOUT_S="2",
            PAGEWIRE_DROPFOLDER_ENGINE="text",
            PAGEWIRE_METRICS_PORT="0",
        )
        self.settings = DropFolderSettings.from_variables(self.env)
        self.s3 = Storage(self.settings).client
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self.tap: aio_pika.abc.AbstractQueue | None = None

    async def open_tap(self) -> None:
        """A queue that receives a copy of every JobRequest published from now on."""
        self.connection = await aio_pika.connect(self.settings.amqp_url.get_secret_value())
        channel = await self.connection.channel()
        exchanges = await declare_topology(channel, self.settings.topology)
        self.tap = await channel.declare_queue(exclusive=True)
        await self.tap.bind(exchanges.jobs, JOB_ROUTING_KEY)

    async def job_requests(self) -> list[JobRequest]:
        """The JobRequests of this test's inbox seen on the tap so far."""
        assert self.tap is not None
        found: list[JobRequest] = []
        while (message := await self.tap.get(no_ack=True, fail=False)) is not None:
            request = parse_as(JobRequest, message.body)
            if request.metadata.get("dropfolder_key", "").startswith(self.root):
                found.append(request)
        return found

    def put(self, name: str, body: bytes) -> str:
        key = f"{self.settings.inbox_prefix}{name}"
        self.s3.put_object(Bucket=self.settings.bucket, Key=key, Body=body)
        return key

    def keys(self, where: str) -> list[str]:
        prefix = {"inbox": self.settings.inbox_prefix, "processed": self.settings.processed_prefix}.get(
            where, self.settings.failed_prefix
        )
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.settings.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def metadata(self, key: str) -> dict[str, str]:
        return dict(self.s3.head_object(Bucket=self.settings.bucket, Key=key)["Metadata"])

    def start(self, name: str, **extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAGEWIRE_")}
        env.update(self.env, **extra)
        log = open(self.tmp_path / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "producer.dropfolder"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")

    async def wait(self, condition: Any, within_s: float = 60.0, what: str = "") -> None:
        deadline = time.monotonic() + within_s
        while not condition():
            for name, proc in self.processes.items():
                if proc.poll() is not None and proc.returncode not in (0, -signal.SIGKILL):
                    raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                logs = "\n".join(self.log(n)[-2000:] for n in self.processes)
                raise AssertionError(f"timed out waiting for {what}\n{logs}")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.connection is not None:
            await self.connection.close()


@pytest.fixture
async def folder(stack: Stack, tmp_path: Path) -> AsyncIterator[Folder]:
    folder = Folder(stack, tmp_path)
    await folder.open_tap()
    yield folder
    await folder.close()


def small_pdf(n: int) -> bytes:
    return text_pdf([lines([f"Drop folder document number {n}.", "A second line of text."])])


async def job_rows(db: AsyncEngine, job_ids: set[str]) -> dict[str, dict[str, Any]]:
    async with db.connect() as conn:
        result = await conn.execute(select(jobs).where(jobs.c.job_id.in_(job_ids)))
        return {row["job_id"]: dict(row) for row in result.mappings()}


async def wait_terminal(db: AsyncEngine, job_ids: set[str], within_s: float = 90.0) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + within_s
    while True:
        rows = await job_rows(db, job_ids)
        if len(rows) == len(job_ids) and all(r["finished_at"] is not None for r in rows.values()):
            return rows
        assert time.monotonic() < deadline, f"jobs not finished: {[(r['job_id'], r['status']) for r in rows.values()]}"
        await asyncio.sleep(0.2)


async def test_two_watchers_make_exactly_one_job_per_pdf(folder: Folder, db: AsyncEngine) -> None:
    # Given an inbox with 12 PDFs, a zero-byte placeholder and a file that is not a PDF
    names = [f"batch/doc-{i:02d}.pdf" for i in range(12)]
    for i, name in enumerate(names):
        folder.put(name, small_pdf(i))
    placeholder = folder.put("upload-in-progress.pdf", b"")
    folder.put("notes.pdf", b"just some text, not a PDF\n")

    # When two watchers scan it at the same time
    folder.start("watcher-a")
    folder.start("watcher-b")
    await folder.wait(lambda: folder.keys("inbox") == [placeholder], what="the inbox to empty")

    # Then each PDF went out as exactly one JobRequest, pointing at its copy in processed/
    requests = await folder.job_requests()
    assert sorted(r.metadata["dropfolder_key"] for r in requests) == sorted(
        f"{folder.settings.inbox_prefix}{n}" for n in names
    )
    job_ids = {r.job_id for r in requests}
    assert len(job_ids) == 12
    processed = folder.keys("processed")
    assert len(processed) == 12
    for request in requests:
        assert request.source.key in processed
        assert request.source.key.startswith(f"{folder.settings.processed_prefix}{request.job_id}/")
        assert folder.metadata(request.source.key)[META_JOB_ID] == request.job_id
    # and the non-PDF went to failed/ at once, with its job id and reason, as a failed job
    (failed,) = folder.keys("failed")
    meta = folder.metadata(failed)
    assert meta[META_ERROR_CODE] == "not_a_pdf" and failed.endswith("/notes.pdf")
    # and every job ran to its end (the planner read the processed/ copy)
    rows = await wait_terminal(db, job_ids | {meta[META_JOB_ID]})
    assert rows[meta[META_JOB_ID]]["status"] == "failed" and rows[meta[META_JOB_ID]]["error_code"] == "not_a_pdf"
    assert {rows[j]["status"] for j in job_ids} == {"completed"}
    # and both watchers took part (the claim table names who handled what)
    async with db.connect() as conn:
        claims = (
            (await conn.execute(select(dropfolder_claims).where(dropfolder_claims.c.key.startswith(folder.root))))
            .mappings()
            .all()
        )
    assert len(claims) == 13 and all(c["done_at"] is not None for c in claims)


async def test_a_watcher_killed_mid_scan_and_restarted_makes_no_duplicate(folder: Folder, db: AsyncEngine) -> None:
    # Given 30 PDFs and a watcher that handles one at a time
    for i in range(30):
        folder.put(f"doc-{i:02d}.pdf", small_pdf(i))
    folder.start("first", PAGEWIRE_SCAN_CONCURRENCY="1")

    # When it is killed -9 part way through
    await folder.wait(lambda: len(folder.keys("processed")) >= 5, what="a few objects handled")
    folder.processes["first"].kill()
    folder.processes["first"].wait()
    left = folder.keys("inbox")
    assert left, "the watcher finished before it was killed; nothing was tested"

    # and another starts (the dead one's unfinished claim is taken over after PAGEWIRE_CLAIM_TIMEOUT_S)
    folder.start("second")
    await folder.wait(lambda: not folder.keys("inbox"), what="the inbox to empty")

    # Then each object made one job: one copy in processed/, one job id, one jobs row
    processed = folder.keys("processed")
    assert len(processed) == 30
    job_ids = {key.split("/")[-2] for key in processed}
    assert len(job_ids) == 30
    requests = await folder.job_requests()
    assert {r.job_id for r in requests} == job_ids
    # A second JobRequest can only come from the millisecond window between the broker's confirm and
    # the claim's published_at, and would carry the same job id (still one job).
    assert len(requests) <= 31
    rows = await wait_terminal(db, job_ids)
    assert {r["status"] for r in rows.values()} == {"completed"}


def watcher(settings: DropFolderSettings, db: AsyncEngine, publisher: Publisher) -> Watcher:
    claims = Claims(db, "test", settings.claim_timeout_s)
    return Watcher(settings, Inbox(Storage(settings)), claims, publisher, Stopper())


async def test_a_restart_between_publish_and_move_republishes_nothing(folder: Folder, db: AsyncEngine) -> None:
    # Given a watcher that dies after publishing the job but before deleting the inbox object
    key = folder.put("report.pdf", small_pdf(1))
    connection = await aio_pika.connect_robust(folder.settings.amqp_url.get_secret_value())
    try:
        publisher = await Publisher.open(connection, folder.settings.topology)
        first = watcher(folder.settings, db, publisher)

        def crash(bucket: str, key: str) -> None:
            raise RuntimeError("killed between publish and delete")

        first.inbox.delete = crash  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            await first.scan()
        assert folder.keys("inbox") == [key]
        (request,) = await folder.job_requests()

        # When a new watcher scans after the claim went stale
        await asyncio.sleep(folder.settings.claim_timeout_s + 0.5)
        report = await watcher(folder.settings, db, publisher).scan()
    finally:
        await connection.close()

    # Then it finished the move without publishing again, under the same job id
    assert report.handled == {"processed": 1}
    assert folder.keys("inbox") == []
    assert folder.keys("processed") == [request.source.key]
    assert await folder.job_requests() == []
    assert folder.metadata(request.source.key)[META_JOB_ID] == request.job_id


async def test_a_watcher_leaves_the_stale_claims_of_another_inbox_alone(folder: Folder, db: AsyncEngine) -> None:
    # Given a watcher that died mid-object, leaving a stale claim in its inbox
    key = folder.put("theirs.pdf", small_pdf(3))
    # and a watcher of another inbox in the same bucket and database, whose prefix would match
    # the first one's keys if it were a LIKE pattern ('_' against '-')
    other_root = folder.root.replace("-", "_")
    other = DropFolderSettings.from_variables(
        dict(folder.env, PAGEWIRE_INBOX_PREFIX=f"{other_root}inbox/", PAGEWIRE_PROCESSED_PREFIX=f"{other_root}done/")
    )
    connection = await aio_pika.connect_robust(folder.settings.amqp_url.get_secret_value())
    try:
        publisher = await Publisher.open(connection, folder.settings.topology)
        first = watcher(folder.settings, db, publisher)

        def crash(bucket: str, key: str) -> None:
            raise RuntimeError("killed between publish and delete")

        first.inbox.delete = crash  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            await first.scan()
        await asyncio.sleep(folder.settings.claim_timeout_s + 0.5)

        # When the other inbox's watcher scans
        elsewhere = await watcher(other, db, publisher).scan()
        # Then it took nothing over: the object and its claim wait for their own inbox's watcher
        assert elsewhere.handled == {}
        assert folder.keys("inbox") == [key]
        mine = await watcher(folder.settings, db, publisher).scan()
    finally:
        await connection.close()
    assert mine.handled == {"processed": 1}
    assert folder.keys("inbox") == []
    assert len(folder.keys("processed")) == 1


async def test_a_restart_between_copy_and_publish_publishes_the_same_job_once(folder: Folder, db: AsyncEngine) -> None:
    # Given a watcher that copied the object to processed/ and died before publishing
    folder.put("scan.pdf", small_pdf(2))
    connection = await aio_pika.connect_robust(folder.settings.amqp_url.get_secret_value())
    try:
        publisher = await Publisher.open(connection, folder.settings.topology)
        first = watcher(folder.settings, db, publisher)

        async def crash(message: Any) -> None:
            raise RuntimeError("killed before publishing")

        first.publisher = Publisher(publisher.exchanges)
        first.publisher.publish_job = crash  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            await first.scan()
        (copy,) = folder.keys("processed")
        assert await folder.job_requests() == []

        # When another watcher takes the stale claim over
        await asyncio.sleep(folder.settings.claim_timeout_s + 0.5)
        await watcher(folder.settings, db, publisher).scan()
    finally:
        await connection.close()

    # Then the job went out once, with the job id in the copy's key, and the copy was not made twice
    (request,) = await folder.job_requests()
    assert request.source.key == copy and copy.split("/")[-2] == request.job_id
    assert folder.keys("processed") == [copy] and folder.keys("inbox") == []


async def test_placeholders_and_young_objects_wait(folder: Folder, db: AsyncEngine) -> None:
    connection = await aio_pika.connect_robust(folder.settings.amqp_url.get_secret_value())
    try:
        publisher = await Publisher.open(connection, folder.settings.topology)
        # Given a zero-byte placeholder
        key = folder.put("big-upload.pdf", b"")
        # When a watcher scans, it leaves it where it is
        report = await watcher(folder.settings, db, publisher).scan()
        assert report.skipped == {"empty": 1} and not report.handled
        assert folder.keys("inbox") == [key]

        # Given the content lands, a watcher that wants objects an hour old still waits
        folder.put("big-upload.pdf", small_pdf(3))
        patient = folder.settings.model_copy(update={"min_age_s": 3600.0})
        report = await watcher(patient, db, publisher).scan()
        assert report.skipped == {"young": 1}

        # and one with no quiet period takes it
        report = await watcher(folder.settings, db, publisher).scan()
        assert report.handled == {"processed": 1}
    finally:
        await connection.close()
    (request,) = await folder.job_requests()
    assert request.metadata["dropfolder_key"] == key


async def test_a_bucket_notification_is_picked_up_at_once(folder: Folder) -> None:
    # Given a watcher that scans once an hour but listens to S3 notifications (MinIO's AMQP target)
    exchange_name = f"{folder.settings.prefix}.s3events"
    folder.start("notified", PAGEWIRE_SCAN_INTERVAL_S="3600", PAGEWIRE_NOTIFY_EXCHANGE=exchange_name)
    queue = folder.settings.notify_queue
    await folder.wait(
        lambda: (devstack.consumer_counts(folder.settings.amqp_url.get_secret_value(), [queue]).get(queue) or 0) > 0,
        what="the notification consumer",
    )
    await asyncio.sleep(0.5)  # its first scan is over (the inbox was empty)

    # When a PDF lands and MinIO's event for it arrives
    key = folder.put("invoice 7.pdf", small_pdf(7))
    event = {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"{folder.settings.bucket}/{key}",
        "Records": [
            {
                "eventName": "s3:ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": folder.settings.bucket},
                    "object": {"key": key.replace(" ", "+"), "size": 1},
                },
            }
        ],
    }
    assert folder.connection is not None
    channel = await folder.connection.channel()
    exchange = await channel.get_exchange(exchange_name)
    try:
        await exchange.publish(aio_pika.Message(json.dumps(event).encode()), routing_key="")

        # Then it is handed over within seconds, long before the next scan
        await folder.wait(lambda: not folder.keys("inbox"), within_s=15, what="the notified object")
    finally:
        await channel.exchange_delete(exchange_name)
    (request,) = await folder.job_requests()
    assert request.metadata["dropfolder_key"] == key


async def test_sigterm_stops_a_watcher_cleanly(folder: Folder) -> None:
    folder.start("stoppable")
    await folder.wait(lambda: "watching s3://" in folder.log("stoppable"), what="the watcher to start")
    folder.processes["stoppable"].send_signal(signal.SIGTERM)
    assert folder.processes["stoppable"].wait(20) == 0
    assert "dropfolder stopped" in folder.log("stoppable")


@pytest.mark.ocr
async def test_images_dropped_become_pdf_jobs_and_a_broken_one_fails(folder: Folder, db: AsyncEngine) -> None:
    import io

    from PIL import Image, ImageDraw, ImageFont

    # Given a two-frame TIFF of text and a PNG cut short, dropped in the inbox
    frames = []
    for words in ("Dropped frame one 17", "Dropped frame two 29"):
        frame = Image.new("L", (560, 80), 255)
        ImageDraw.Draw(frame).text((12, 18), words, fill=0, font=ImageFont.load_default(size=36))
        frames.append(frame)
    tiff, png = io.BytesIO(), io.BytesIO()
    frames[0].save(tiff, "TIFF", save_all=True, append_images=frames[1:])
    frames[0].save(png, "PNG")
    folder.put("scans/fax.tiff", tiff.getvalue())
    folder.put("cut.png", png.getvalue()[:120])

    # When a watcher (OCR on its jobs: the images have no text layer) takes them
    folder.start("watcher", PAGEWIRE_DROPFOLDER_ENGINE="rapidocr")
    await folder.wait(lambda: not folder.keys("inbox"), what="the inbox to empty")

    # Then the TIFF became a two-page PDF in processed/, read as an ordinary job
    (made,) = folder.keys("processed")
    assert made.endswith("/scans/fax.pdf")
    job_id = folder.metadata(made)[META_JOB_ID]
    # and the cut PNG went to failed/ as it came, with bad_image
    (failed,) = folder.keys("failed")
    assert failed.endswith("/cut.png") and folder.metadata(failed)[META_ERROR_CODE] == "bad_image"
    rows = await wait_terminal(db, {job_id, folder.metadata(failed)[META_JOB_ID]}, within_s=120)
    assert rows[job_id]["status"] == "completed" and rows[job_id]["total_pages"] == 2
    assert rows[folder.metadata(failed)[META_JOB_ID]]["error_code"] == "bad_image"
