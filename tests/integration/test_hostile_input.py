"""Hostile input: documents and messages built to hurt ends as a clear failure, and the service goes on.

Each case sends something built to exhaust a limit through the real stack and
checks what a user sees: the failure with its documented code and a message
(on the job, or on the one page), the roles still running, and a good job right
after still completing. The cheap cases ``test_bad_input.py`` covers are not
repeated here. ``docs/errors.md`` lists every code.

Measured on the 2-core CI machine, the numbers behind the bounds below:

- 10,000 empty pages: written by pdfium in 0.2 s (1.3 MB), refused by the page
  count before any page is loaded (5 ms).
- a page of 14400 x 14400 pt at 300 dpi: 3600 megapixels, refused before
  pdfium allocates the bitmap (it would be 10 GB).
- a Flate bomb of whitespace (256 KB that inflates to 256 MB): pdfium inflates
  it whole, about 0.6 s and twice the inflated size in memory, per load of the
  page; bounded by the inflated size, so survivable.
- a Flate bomb of drawing operators (16 KB inflating to 10 MB of ``(A) Tj``):
  pdfium builds an object per operator, about 80 bytes of memory per inflated
  byte: 2.5 s and 0.9 GB in the planner's text check, 11 s and 1.2 GB in the
  worker's text layer; 100 MB inflated (150 KB on disk) took 51 s and 8 GB.
  Nothing bounds it yet: see ``test_operator_bomb_is_cut_off_by_a_page_budget``.
"""

from __future__ import annotations

import secrets
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from pydantic import ValidationError

from producer.api import Client
from producer.dead import DeadLetters
from schemas.errors import ErrorCode
from schemas.messages import (
    Engine,
    JobFailed,
    JobOptions,
    JobRequest,
    PageCompleted,
    PageFailed,
    Source,
    to_body,
)
from tests.integration.stack import JobRun, Stack, run_job, running_stack
from tools.samples import concat, lines, text_pdf, write_pdf

pytestmark = pytest.mark.integration

MAX_PDF_BYTES = 2_000_000
MAX_MESSAGE_BYTES = 8192
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def planner_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The planner's PDF cache, its own, so a test can see what it downloaded."""
    return tmp_path_factory.mktemp("planner-cache")


@pytest.fixture(scope="module")
def stack(services: Any, planner_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Planner with a small file and message limit."""
    planner_env = {
        "PAGEWIRE_MAX_PDF_BYTES": str(MAX_PDF_BYTES),
        "PAGEWIRE_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
        "PAGEWIRE_CACHE_DIR": str(planner_cache),
    }
    with running_stack(services, tmp_path_factory.mktemp("roles"), role_env={"planner": planner_env}) as stack:
        yield stack


def assert_failed(run: JobRun, code: ErrorCode) -> None:
    (failed,) = [e for e in run.events if isinstance(e, JobFailed)]
    assert failed.error_code == code
    assert failed.message
    assert run.status["status"] == "failed"
    assert run.status["error_code"] == code
    assert run.status["error_message"]
    assert not run.of_type("PageCompleted")


async def assert_still_serving(stack: Stack) -> None:
    for name, process in stack.processes.items():
        assert process.poll() is None, f"{name} died:\n{stack.log(name)[-3000:]}"
    run = await run_job(stack, text_pdf([lines(["still serving"])]), options=JobOptions(engine=Engine.TEXT))
    assert run.status["status"] == "completed"


def peak_rss_mib(stack: Stack, name: str) -> float:
    """The role process's peak resident memory (VmHWM) so far."""
    status = Path(f"/proc/{stack.processes[name].pid}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) / 1024


def large_files(directory: Path, size: int) -> list[Path]:
    return [p for p in directory.iterdir() if p.stat().st_size >= size]


def flate_bomb(chunk: bytes, inflated_bytes: int, *, font: bool = False) -> bytes:
    """A one-page PDF (letter) whose content stream is ``chunk`` repeated to ``inflated_bytes``, Flate-compressed.

    Written by hand: pdfium would re-encode the stream. Compressed in pieces,
    so the inflated stream never exists in this process.
    """
    compressor = zlib.compressobj(9)
    piece = chunk * max(1, MiB // len(chunk))
    parts = [compressor.compress(b"BT /F1 12 Tf 72 700 Td\n" if font else b"")]
    parts += [compressor.compress(piece) for _ in range(inflated_bytes // len(piece))]
    parts.append(compressor.compress(b"ET\n" if font else b"") + compressor.flush())
    stream = b"".join(parts)
    resources = b"<< /Font << /F1 5 0 R >> >>" if font else b"<< >>"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources %s /Contents 4 0 R >>" % resources,
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    return write_pdf(objects)


async def test_ten_thousand_pages_is_too_many_pages_at_the_default_limit(stack: Stack) -> None:
    # Given 10,000 empty pages (the planner runs with the default limit of 5000)
    started = time.perf_counter()
    pdf = text_pdf([[] for _ in range(10_000)])
    assert time.perf_counter() - started < 5 and len(pdf) < MAX_PDF_BYTES

    run = await run_job(stack, pdf, wait_s=60)

    assert_failed(run, ErrorCode.TOO_MANY_PAGES)
    assert "10000 pages" in str(run.status["error_message"])
    await assert_still_serving(stack)


async def test_a_page_absurdly_large_at_the_dpi_fails_alone_with_page_too_large(stack: Stack) -> None:
    # Given a 200 x 200 inch page (14400 pt, pdfium's largest) and a letter page, both empty, read by OCR at 300 dpi
    pdf = concat(text_pdf([[]], size=(14400.0, 14400.0)), text_pdf([[]]))

    run = await run_job(stack, pdf, options=JobOptions(engine=Engine.RAPIDOCR, dpi=300), wait_s=120)

    # Then page 1 fails for good with page_too_large (3600 megapixels, refused before rendering), page 2 is read
    (failed,) = [e for e in run.events if isinstance(e, PageFailed)]
    assert (failed.page_no, failed.error_code, failed.final) == (1, ErrorCode.PAGE_TOO_LARGE, True)
    assert "14400x14400 pt: 3600." in failed.message and "megapixels at 300 dpi" in failed.message
    assert [e.page_no for e in run.events if isinstance(e, PageCompleted)] == [2]
    assert run.status["status"] == "completed_with_errors"
    assert (run.status["pages_ok"], run.status["pages_failed"]) == (1, 1)
    # A 10 GB bitmap was never drawn.
    assert peak_rss_mib(stack, "worker") < 2048
    await assert_still_serving(stack)


async def test_a_whitespace_flate_bomb_is_read_within_bounds(stack: Stack) -> None:
    # Given a 256 KB PDF whose content stream inflates to 256 MB (of spaces), read with auto (so rendered and OCRed)
    pdf = flate_bomb(b" ", 256 * MiB)
    assert len(pdf) < 400_000

    started = time.perf_counter()
    run = await run_job(stack, pdf, wait_s=90)
    elapsed = time.perf_counter() - started

    # Then it is an empty page like any other, in seconds, and memory stays bounded by the inflated size
    assert run.status["status"] == "completed", run.status
    assert elapsed < 60
    assert peak_rss_mib(stack, "planner") < 2048
    assert peak_rss_mib(stack, "worker") < 2048
    await assert_still_serving(stack)


async def test_an_object_over_the_size_limit_is_refused_before_download(stack: Stack, planner_cache: Path) -> None:
    # Given a 3 MB object (the planner allows 2 MB); it need not even be a PDF
    pdf = b"%PDF-1.4\n" + secrets.token_bytes(3_000_000)

    run = await run_job(stack, pdf)

    # Then the job fails with file_too_large, decided on the GET's headers: nothing that size reached the cache
    assert_failed(run, ErrorCode.FILE_TOO_LARGE)
    assert "over the limit of 2000000" in str(run.status["error_message"])
    assert not large_files(planner_cache, 3_000_000)
    await assert_still_serving(stack)


async def publish_body(stack: Stack, job_id: str, body: bytes) -> JobRun:
    """Publish a body by hand, as a service in another language would, and follow the job to its end."""
    async with Client(stack.settings) as client, client.subscribe() as events:
        connection = await aio_pika.connect(stack.settings.amqp_url.get_secret_value())
        async with connection:
            exchange = await (await connection.channel()).get_exchange(stack.topology.jobs_exchange)
            await exchange.publish(aio_pika.Message(body, message_id=job_id), "job")
        seen = [e async for e in events.for_jobs({job_id})]
        status = await client.final_status(job_id)
    return JobRun(job_id, seen, status)


async def publish_raw(stack: Stack, request: JobRequest) -> JobRun:
    """Publish a request as another service would (no client-side checks) and follow the job to its end."""
    async with Client(stack.settings) as client, client.subscribe() as events:
        await client.publisher.publish_job(request)
        seen = [e async for e in events.for_jobs({request.job_id})]
        status = await client.final_status(request.job_id)
    return JobRun(request.job_id, seen, status)


async def test_a_key_with_a_nul_is_refused_by_the_contract(stack: Stack) -> None:
    # The model refuses to build it: a Python producer cannot even send it
    with pytest.raises(ValidationError, match="validation error for Source"):
        JobRequest(source=Source(bucket=stack.settings.s3_bucket, key="jobs/evil\x00.pdf"))

    # Sent by hand by another service, it breaks the published schema: malformed, the job fails, the body is kept
    job_id = f"nul-key-{secrets.token_hex(4)}"
    body = b'{"type": "JobRequest", "schema_version": 1, "job_id": "%s", "source": {"bucket": "%s", "key": "%s"}}' % (
        job_id.encode(),
        stack.settings.s3_bucket.encode(),
        b"jobs/evil\\u0000.pdf",
    )
    run = await publish_body(stack, job_id, body)

    assert_failed(run, ErrorCode.MALFORMED_MESSAGE)
    assert "source.key" in str(run.status["error_message"])
    async with DeadLetters(stack.settings) as dead:
        letters = {letter.id: letter for letter in await dead.list()}
        assert letters[job_id].error_code == ErrorCode.MALFORMED_MESSAGE
        await dead.purge([job_id])
    await assert_still_serving(stack)


async def test_a_key_that_climbs_out_is_invalid_key(stack: Stack) -> None:
    request = JobRequest(source=Source(bucket=stack.settings.s3_bucket, key="jobs/../evil.pdf"))
    async with Client(stack.settings) as client:
        with pytest.raises(Exception, match="invalid_key"):
            await client.publish(request)  # the client refuses it before publishing

    run = await publish_raw(stack, request)

    assert_failed(run, ErrorCode.INVALID_KEY)
    assert "'..' segment" in str(run.status["error_message"])
    await assert_still_serving(stack)


async def test_keys_over_1024_bytes(stack: Stack) -> None:
    """S3 allows 1,024 bytes of UTF-8 in a key. Two codes, on purpose (docs/errors.md):

    - over 1,024 *characters*: the message breaks the published JSON Schema
      (``maxLength: 1024``, which producers in other languages validate
      against), so it is ``malformed_message`` like any schema violation:
      the named job fails and the body is dead-lettered for inspection;
    - at most 1,024 characters but over 1,024 *bytes* (JSON Schema cannot say
      bytes): the message is well-formed, the key is not: ``invalid_key``.
    """
    # Given a key of 1,025 ASCII characters, published by hand (the model would refuse to build it)
    long_id = f"long-{secrets.token_hex(4)}"
    body = b'{"type": "JobRequest", "schema_version": 1, "job_id": "%s", "source": {"bucket": "%s", "key": "%s"}}' % (
        long_id.encode(),
        stack.settings.s3_bucket.encode(),
        b"k" * 1025,
    )
    run = await publish_body(stack, long_id, body)
    assert_failed(run, ErrorCode.MALFORMED_MESSAGE)
    assert "source.key" in str(run.status["error_message"])
    async with DeadLetters(stack.settings) as dead:
        letters = {letter.id: letter for letter in await dead.list()}
        assert letters[long_id].error_code == ErrorCode.MALFORMED_MESSAGE
        await dead.purge([long_id])

    # Given 600 two-byte characters: 600 characters, 1,200 bytes
    run = await publish_raw(stack, JobRequest(source=Source(bucket=stack.settings.s3_bucket, key="é" * 600)))

    assert_failed(run, ErrorCode.INVALID_KEY)
    assert "longer than 1024 bytes" in str(run.status["error_message"])
    await assert_still_serving(stack)


async def test_an_oversized_message_is_message_too_large_and_dead_lettered(stack: Stack) -> None:
    # Given a request of about 12 KB (the planner takes 8 KB) that names its job
    request = JobRequest(
        source=Source(bucket=stack.settings.s3_bucket, key="jobs/big/source.pdf"),
        metadata={f"k{i}": "x" * 400 for i in range(30)},
    )
    assert len(to_body(request)) > MAX_MESSAGE_BYTES

    run = await publish_raw(stack, request)

    # Then the job fails with message_too_large and the body waits in the dead-letter queue with the reason
    assert_failed(run, ErrorCode.MESSAGE_TOO_LARGE)
    async with DeadLetters(stack.settings) as dead:
        letters = {letter.id: letter for letter in await dead.list()}
        letter = letters[request.job_id]
        assert letter.error_code == ErrorCode.MESSAGE_TOO_LARGE
        assert letter.origin_queue == stack.topology.jobs_queue
        assert letter.body_bytes == len(to_body(request))
        await dead.purge([request.job_id])
    await assert_still_serving(stack)


async def test_operator_bomb_is_cut_off_by_a_page_budget(stack: Stack) -> None:
    # Given 16 KB that inflate to 10 MB of text-showing operators (1.5 million text objects on one page)
    pdf = flate_bomb(b"(A) Tj ", 10 * MiB, font=True)
    assert len(pdf) < 50_000

    started = time.perf_counter()
    run = await run_job(stack, pdf, options=JobOptions(engine=Engine.TEXT), wait_s=120)
    elapsed = time.perf_counter() - started

    # Then the page fails as pdf_too_complex within seconds: its 1.5 million characters are over the
    # text layer's limit (MAX_PAGE_CHARS), and were it slower to parse, the 5 s text budget would cut it off
    codes = [e.error_code for e in run.events if isinstance(e, JobFailed | PageFailed)]
    assert codes, f"no failure: {run.status['status']} after {elapsed:.1f} s"
    assert ErrorCode.PDF_TOO_COMPLEX in codes
    # The planner reads no page; unbudgeted, the worker read it in 4 s and sent 1.5 MB of text on.
    assert elapsed < 12
