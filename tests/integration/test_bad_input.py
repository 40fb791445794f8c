"""Bad input ends as a failed job with a documented code, and the service goes on.

Each case submits something wrong through the real stack and checks what a
user sees: a ``JobFailed`` event with the code, a ``failed`` row with the code
and a message, and then a good job on the same roles still completes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from producer.api import Client
from schemas.errors import ErrorCode
from schemas.messages import Engine, JobFailed, JobOptions, JobRequest, Source
from tests.integration.stack import JobRun, Stack, run_job, running_stack
from tools.samples import encrypted_pdf, lines, text_pdf, zero_page_pdf

MAX_PAGES = 50


@pytest.fixture(scope="module")
def stack(services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    role_env = {"planner": {"PAGEWIRE_MAX_PAGES": str(MAX_PAGES)}}
    with running_stack(services, tmp_path_factory.mktemp("roles"), role_env=role_env) as stack:
        yield stack


def assert_failed(run: JobRun, code: ErrorCode) -> None:
    (failed,) = [e for e in run.events if isinstance(e, JobFailed)]
    assert failed.error_code == code
    assert run.status["status"] == "failed"
    assert run.status["error_code"] == code
    assert run.status["error_message"]
    assert not run.of_type("PageCompleted")


async def assert_still_serving(stack: Stack) -> None:
    run = await run_job(stack, text_pdf([lines(["still serving"])]), options=JobOptions(engine=Engine.TEXT))
    assert run.status["status"] == "completed"


@pytest.mark.parametrize(
    ("name", "make", "code"),
    [
        ("not a PDF", lambda c: b"GIF89a this is a picture, not a document" * 10, ErrorCode.NOT_A_PDF),
        ("zero bytes", lambda c: b"", ErrorCode.EMPTY_FILE),
        ("truncated", lambda c: (c / "real/pdflatex-4-pages.pdf").read_bytes()[:20_000], ErrorCode.TRUNCATED_PDF),
        ("encrypted", lambda c: encrypted_pdf(), ErrorCode.ENCRYPTED_PDF),
        ("zero pages", lambda c: zero_page_pdf(), ErrorCode.NO_PAGES),
        ("too many pages", lambda c: (c / "real/GeoTopo-komprimiert.pdf").read_bytes(), ErrorCode.TOO_MANY_PAGES),
    ],
)
async def test_bad_pdf_fails_the_job_with_its_code(
    stack: Stack, corpus: Path, name: str, make: Any, code: ErrorCode
) -> None:
    run = await run_job(stack, make(corpus))

    assert_failed(run, code)
    await assert_still_serving(stack)


async def test_missing_object_fails_with_source_missing(stack: Stack) -> None:
    async with Client(stack.settings) as client, client.subscribe() as events:
        request = JobRequest(source=Source(bucket=stack.settings.s3_bucket, key="nowhere/missing.pdf"))
        await client.publish(request)
        seen = [e async for e in events.for_jobs({request.job_id})]
        status = await client.final_status(request.job_id)
    assert_failed(JobRun(request.job_id, seen, status), ErrorCode.SOURCE_MISSING)
    await assert_still_serving(stack)


async def test_page_range_beyond_the_document_is_invalid_options(stack: Stack) -> None:
    run = await run_job(stack, text_pdf([lines(["one page"])]), options=JobOptions(first_page=5))

    assert_failed(run, ErrorCode.INVALID_OPTIONS)


async def test_malformed_message_is_dead_lettered_and_named_job_fails(stack: Stack) -> None:
    # Given a message another service published by hand, naming a job but missing its source
    body = b'{"type": "JobRequest", "schema_version": 1, "job_id": "hand-made-1"}'
    connection = await aio_pika.connect(stack.settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(stack.topology.jobs_exchange)
        async with Client(stack.settings) as client, client.subscribe() as events:
            await exchange.publish(aio_pika.Message(body, content_type="application/json"), "job")
            await exchange.publish(aio_pika.Message(b"\x00 not json"), "job")
            seen = [e async for e in events.for_jobs({"hand-made-1"})]
            status = await client.final_status("hand-made-1")
        # Then the named job failed with malformed_message, and both bodies wait in the dead-letter queue
        assert_failed(JobRun("hand-made-1", seen, status), ErrorCode.MALFORMED_MESSAGE)
        dead = await channel.get_queue(stack.topology.dead_queue)
        bodies = []
        for _ in range(50):
            message = await dead.get(fail=False)
            if message is None:
                if len(bodies) >= 2:
                    break
                await asyncio.sleep(0.1)
                continue
            await message.ack()
            bodies.append((message.body, (message.headers or {}).get("x-pagewire-error-code")))
        assert (body, "malformed_message") in bodies
        assert (b"\x00 not json", "malformed_message") in bodies
    await assert_still_serving(stack)


async def test_unknown_schema_version_is_refused(stack: Stack) -> None:
    body = b'{"type": "JobRequest", "schema_version": 99, "job_id": "future-1", "source": {"bucket": "x", "key": "y"}}'
    connection = await aio_pika.connect(stack.settings.amqp_url.get_secret_value())
    async with connection, Client(stack.settings) as client, client.subscribe() as events:
        channel = await connection.channel()
        exchange = await channel.get_exchange(stack.topology.jobs_exchange)
        await exchange.publish(aio_pika.Message(body), "job")
        seen = [e async for e in events.for_jobs({"future-1"})]
        status = await client.final_status("future-1")
    assert_failed(JobRun("future-1", seen, status), ErrorCode.UNSUPPORTED_SCHEMA_VERSION)


@pytest.mark.parametrize(
    ("bucket", "key", "code"),
    [
        (None, "jobs/../../etc/passwd", ErrorCode.INVALID_KEY),
        ("someone-elses-bucket", "doc.pdf", ErrorCode.BUCKET_NOT_ALLOWED),
    ],
)
async def test_keys_and_buckets_are_checked(stack: Stack, bucket: str | None, key: str, code: ErrorCode) -> None:
    request = JobRequest(source=Source(bucket=bucket or stack.settings.s3_bucket, key=key))
    async with Client(stack.settings) as client, client.subscribe() as events:
        # The client refuses it before publishing...
        with pytest.raises(Exception, match=str(code)):
            await client.publish(request)
        # ...and so does the planner when another service publishes it anyway.
        await client.publisher.publish_job(request)
        seen = [e async for e in events.for_jobs({request.job_id})]
        status = await client.final_status(request.job_id)
    assert_failed(JobRun(request.job_id, seen, status), code)
