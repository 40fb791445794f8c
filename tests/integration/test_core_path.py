"""The core path end to end on the real services: a PDF in, page events out, rows and results stored.

One stack of real role processes (planner, worker, recorder) serves this
module; each test submits through the Python API, follows the job on its own
subscriber queue bound to the events exchange, and checks what a user sees:
the events, the rows in ``jobs``/``pages``, the text and the files in S3.

Character error bounds (whitespace-normalised edit distance over the expected
length), per class of page:

- born-digital, read from the text layer: at most 0.01
- scanned one-column, rapidocr at 150 dpi: at most 0.05
- scanned two-column (synthetic, noisy), rapidocr: at most 0.10
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import select

from schemas.messages import Engine, JobOptions, JobStarted, PageCompleted
from schemas.tables import applied_events, jobs, pages
from tests.integration.stack import JobRun, Stack, run_job, running_stack
from tests.textcheck import cer, expected_pages
from tools.samples import DEMO_TEXT, SCAN_TEXT, lines, mixed_sample, text_pdf

BORN_DIGITAL_CER = 0.01
SCANNED_CER = 0.05
TWO_COLUMN_CER = 0.10


@pytest.fixture(scope="module")
def stack(services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(services, tmp_path_factory.mktemp("roles")) as stack:
        yield stack


async def page_rows(db: Any, job_id: str) -> list[dict[str, object]]:
    async with db.connect() as conn:
        result = await conn.execute(select(pages).where(pages.c.job_id == job_id).order_by(pages.c.page_no))
        return [dict(r) for r in result.mappings()]


def s3_object(services: Any, key: str) -> bytes:
    client = boto3.client(
        "s3",
        endpoint_url=services.s3_endpoint_url,
        aws_access_key_id=services.access_key,
        aws_secret_access_key=services.secret_key,
        region_name="us-east-1",
    )
    return client.get_object(Bucket=services.bucket, Key=key)["Body"].read()


def assert_one_event_per_page(run: JobRun, total: int) -> list[PageCompleted]:
    """The documented shape: JobQueued, JobStarted, one PageCompleted per page, JobCompleted last."""
    kinds = [e.type for e in run.events]
    assert kinds[-1] == "JobCompleted"
    assert "JobStarted" in kinds and "JobQueued" in kinds
    completed = [e for e in run.events if isinstance(e, PageCompleted)]
    assert sorted(e.page_no for e in completed) == list(range(1, total + 1))
    return sorted(completed, key=lambda e: e.page_no)


async def test_born_digital_pdf_is_read_from_its_text_layer(stack: Stack, services: Any, corpus: Path, db: Any) -> None:
    # Given a born-digital PDF of four pages
    name = "real/pdflatex-4-pages.pdf"
    expected = expected_pages(corpus, name)

    # When it is submitted in auto mode
    run = await run_job(stack, (corpus / name).read_bytes())

    # Then every page came from the text layer, in one event each, matching the expected text
    completed = assert_one_event_per_page(run, 4)
    assert {e.engine for e in completed} == {Engine.TEXT}
    for event, want in zip(completed, expected, strict=True):
        assert cer(want, event.text) <= BORN_DIGITAL_CER
    # and the status row and the page rows say so
    assert run.status["status"] == "completed"
    assert (run.status["total_pages"], run.status["pages_ok"], run.status["pages_failed"]) == (4, 4, 0)
    rows = await page_rows(db, run.job_id)
    assert [(r["page_no"], r["status"], r["engine"]) for r in rows] == [(p, "completed", "text") for p in range(1, 5)]
    # and the assembled results are in S3
    keys = run.status["result_keys"]
    assert isinstance(keys, dict) and set(keys) == {"md", "json"}
    markdown = s3_object(services, keys["md"]).decode()
    assert cer("\n".join(expected), markdown.replace("<!-- page", "").replace("-->", "")) < 0.01
    document = json.loads(s3_object(services, keys["json"]))
    assert [p["page_no"] for p in document["pages"]] == [1, 2, 3, 4]
    assert all(p["blocks"] for p in document["pages"])


async def test_synthetic_born_digital_twenty_pages(stack: Stack, corpus: Path) -> None:
    expected = expected_pages(corpus, "synthetic/born_digital.pdf")

    run = await run_job(
        stack, (corpus / "synthetic/born_digital.pdf").read_bytes(), options=JobOptions(engine=Engine.TEXT)
    )

    completed = assert_one_event_per_page(run, 20)
    worst = max(cer(want, e.text) for want, e in zip(expected, completed, strict=True))
    assert worst <= BORN_DIGITAL_CER
    started = run.of_type("JobStarted")[0]
    assert started.tasks < 20  # text pages travel many to a task


@pytest.mark.ocr
async def test_scanned_page_is_read_by_ocr(stack: Stack, corpus: Path) -> None:
    name = "scanned/google-doc-document-scan.pdf"
    expected = expected_pages(corpus, name)

    run = await run_job(stack, (corpus / name).read_bytes())

    (page,) = assert_one_event_per_page(run, 1)
    assert page.engine == Engine.RAPIDOCR
    assert cer(expected[0], page.text) <= SCANNED_CER
    assert page.blocks and all(0 <= b.bbox[0] <= b.bbox[2] <= 1 for b in page.blocks)
    assert 0 < page.confidence <= 1


@pytest.mark.ocr
async def test_two_column_scan_is_read_in_column_order(stack: Stack, corpus: Path) -> None:
    layouts = json.loads((corpus / "synthetic/layouts.json").read_text())
    page_no = layouts.index("two_col") + 1
    expected = expected_pages(corpus, "synthetic/scanned_noisy.pdf")[page_no - 1]

    run = await run_job(
        stack,
        (corpus / "synthetic/scanned_noisy.pdf").read_bytes(),
        options=JobOptions(engine=Engine.AUTO, first_page=page_no, last_page=page_no),
    )

    (page,) = [e for e in run.events if isinstance(e, PageCompleted)]
    assert page.page_no == page_no and page.engine == Engine.RAPIDOCR
    assert cer(expected, page.text) <= TWO_COLUMN_CER
    assert run.status["status"] == "completed" and run.status["total_pages"] == 1


@pytest.mark.ocr
async def test_auto_mode_uses_ocr_only_where_there_is_no_text_layer(stack: Stack, db: Any) -> None:
    # Given a PDF whose page 1 is born-digital and page 2 an image only
    run = await run_job(stack, mixed_sample())

    # Then page 1 came from the text layer and page 2 from OCR: the planner sent one task, and the
    # worker that judged page 2 handed it on as a task of its own
    assert next(e for e in run.events if isinstance(e, JobStarted)).tasks == 1
    first, second = assert_one_event_per_page(run, 2)
    assert first.engine == Engine.TEXT and first.render_ms == 0
    assert second.engine == Engine.RAPIDOCR and second.render_ms > 0
    assert cer("\n".join(DEMO_TEXT), first.text) == 0
    assert cer("\n".join(SCAN_TEXT), second.text) <= SCANNED_CER
    rows = await page_rows(db, run.job_id)
    assert [(r["engine"], r["text_source"]) for r in rows] == [("text", "text"), ("rapidocr", "ocr")]
    assert (first.text_source, second.text_source) == ("text", "ocr")


async def test_every_event_is_recorded_once(stack: Stack, corpus: Path, db: Any) -> None:
    run = await run_job(
        stack, (corpus / "real/pdflatex-4-pages.pdf").read_bytes(), options=JobOptions(engine=Engine.TEXT)
    )

    # The recorder applies its own JobCompleted when it comes back from the exchange: allow it a moment.
    wanted = sorted(e.event_id for e in run.events)
    for _ in range(100):
        async with db.connect() as conn:
            query = select(applied_events.c.event_id).where(applied_events.c.job_id == run.job_id)
            applied = sorted((await conn.execute(query)).scalars())
            job = (await conn.execute(select(jobs).where(jobs.c.job_id == run.job_id))).mappings().one()
        if applied == wanted:
            break
        await asyncio.sleep(0.05)
    assert applied == wanted
    assert job["pages_ok"] == 4 and job["completion_published_at"] is not None


async def test_a_long_page_range_is_planned_in_tasks_and_every_page_read_once(stack: Stack, db: Any) -> None:
    # Given pages 3-70 of a 70-page born-digital PDF: three tasks of 32 pages at most
    pdf = text_pdf([lines([f"Page {n} of a long report, read from its own text layer."]) for n in range(1, 71)])

    run = await run_job(stack, pdf, options=JobOptions(engine=Engine.AUTO, first_page=3, last_page=70))

    # Then every page of the range has one event and one completed row, and JobStarted counts the tasks
    started = next(e for e in run.events if isinstance(e, JobStarted))
    assert (started.first_page, started.last_page, started.total_pages, started.tasks) == (3, 70, 68, 3)
    completed = [e.page_no for e in run.events if isinstance(e, PageCompleted)]
    assert sorted(completed) == list(range(3, 71))
    rows = await page_rows(db, run.job_id)
    assert [r["page_no"] for r in rows] == list(range(3, 71))
    assert all(r["status"] == "completed" for r in rows)
    assert str(next(r["text"] for r in rows if r["page_no"] == 40)).startswith("Page 40 of a long report")
    assert run.status["status"] == "completed" and run.status["pages_ok"] == 68
