"""Other services' clients, unchanged, against ``pagewire http``; images as input; the thin ``--api`` CLI.

One stack of real roles and one real gateway serve the module. Each test
drives a contract step by step the way its clients do: DeepSeek-OCR's async
job server (create, poll until done, download, metadata, list, cancel),
slimgest's service status (``GET /``), job status and batch stream, and
pagewire's own commands through the gateway with ``--api``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont

from tests.integration.http_gateway import Gateway, read_sse, running_gateway, running_stack
from tests.integration.stack import Stack, pagewire_command
from tools.samples import lines, scanned_pdf, text_pdf

DEEPSEEK_ENDED = {"completed", "failed", "cancelled"}
DEEPSEEK_JOB_FIELDS = {
    "job_id",
    "filename",
    "status",
    "progress",
    "total_pages",
    "processed_pages",
    "created_at",
    "started_at",
    "completed_at",
    "error",
}


@pytest.fixture(scope="module")
def stack(services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(services, tmp_path_factory.mktemp("roles")) as stack:
        yield stack


@pytest.fixture(scope="module")
def gateway(stack: Stack) -> Iterator[Gateway]:
    # Small image limits, so that a refusal is cheap to provoke.
    limits = {"PAGEWIRE_IMAGE_MAX_MEGAPIXELS": "1", "PAGEWIRE_IMAGE_MAX_PAGES": "4"}
    with running_gateway(stack, limits) as gateway:
        yield gateway


def text_image(words: str, fmt: str = "PNG") -> bytes:
    """A small picture of a line of text: OCR reads it in a second or two."""
    image = Image.new("L", (560, 80), 255)
    ImageDraw.Draw(image).text((12, 18), words, fill=0, font=ImageFont.load_default(size=36))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


async def poll_like_deepseek(http: httpx.AsyncClient, job_id: str, wait_s: float = 90) -> dict[str, Any]:
    """DeepSeek-OCR's client loop: GET /jobs/{id} until completed, failed or cancelled."""
    deadline = time.monotonic() + wait_s
    while True:
        response = await http.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        assert set(job) >= DEEPSEEK_JOB_FIELDS
        assert 0 <= job["progress"] <= 100
        if job["status"] in DEEPSEEK_ENDED:
            return job
        assert job["status"] in {"queued", "processing", "running"}, job["status"]
        assert time.monotonic() < deadline, f"job {job_id} did not end: {job}"
        await asyncio.sleep(0.3)


# --- DeepSeek-OCR's async job server ---------------------------------------------------------


async def test_a_deepseek_client_creates_polls_downloads_and_lists(gateway: Gateway) -> None:
    pdf = text_pdf([lines(["DeepSeek's client reads this."]), lines(["And this, on page two."])])
    async with gateway.client() as http:
        # Its health check
        health = await http.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"

        # Create: multipart file and a prompt
        created = await http.post(
            "/jobs/create",
            files={"file": ("report.pdf", pdf, "application/pdf")},
            data={"prompt": "<image>\nConvert the document to markdown."},
        )
        assert created.status_code == 200, created.text
        body = created.json()
        assert body["success"] is True and body["message"] and body["job_id"]
        job_id = body["job_id"]

        # Poll until it ends
        job = await poll_like_deepseek(http, job_id)
        assert job["status"] == "completed" and job["error"] is None
        assert (job["filename"], job["total_pages"], job["processed_pages"], job["progress"]) == (
            "report.pdf",
            2,
            2,
            100,
        )
        assert job["completed_at"] and job["created_at"] and job["pagewire_status"] == "completed"

        # Download the Markdown as a file
        download = await http.get(f"/jobs/{job_id}/download")
        assert download.status_code == 200
        assert download.headers["content-type"].startswith("text/markdown")
        assert download.headers["content-disposition"] == 'attachment; filename="report.md"'
        assert "DeepSeek's client reads this." in download.text and "page two" in download.text

        # Its metadata
        meta = (await http.get(f"/jobs/{job_id}/metadata")).json()
        assert meta["filename"] == "report.pdf" and meta["total_pages"] == 2
        assert meta["processed_at"] and meta["processing_time_seconds"] >= 0
        assert meta["prompt"].startswith("<image>")

        # The list, newest first, each job with the fields of GET /jobs/{id}
        listed = (await http.get("/jobs", params={"limit": 5})).json()
        assert listed["jobs"][0]["job_id"] == job_id
        assert set(listed["jobs"][0]) >= DEEPSEEK_JOB_FIELDS


async def test_a_download_is_named_by_the_files_base_name_only(gateway: Gateway) -> None:
    pdf = text_pdf([lines(["A page with a name."])])
    async with gateway.client() as http:
        # Given files uploaded under a path and under a name beyond ASCII
        job_ids = []
        for name in ("../../etc/x.pdf", "résumé ñ.pdf"):
            created = await http.post(
                "/jobs/create", files={"file": (name, pdf, "application/pdf")}, data={"engine": "text"}
            )
            assert created.status_code == 200, created.text
            job_ids.append(created.json()["job_id"])
            assert (await poll_like_deepseek(http, job_ids[-1]))["status"] == "completed"

        # When their Markdown is downloaded
        path, accented = [await http.get(f"/jobs/{job_id}/download") for job_id in job_ids]
        result = await http.get(f"/jobs/{job_ids[0]}/result", params={"download": "true"})

    # Then the name is the file's own, with no directory, in ASCII and in UTF-8
    assert path.headers["content-disposition"] == 'attachment; filename="x.md"'
    assert accented.headers["content-disposition"] == (
        "attachment; filename=\"resume n.md\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%C3%B1.md"
    )
    assert result.headers["content-disposition"] == f'attachment; filename="{job_ids[0]}.md"'


@pytest.mark.ocr
async def test_a_deepseek_client_gets_400_before_the_end_and_cancels_with_delete(gateway: Gateway) -> None:
    scan = scanned_pdf([lines([f"Scanned page {n}, to be cancelled."]) for n in range(1, 5)])
    async with gateway.client() as http:
        created = await http.post(
            "/jobs/create", files={"file": ("long.pdf", scan, "application/pdf")}, data={"engine": "rapidocr"}
        )
        job_id = created.json()["job_id"]

        # Not ended: download and metadata answer 400
        early = await http.get(f"/jobs/{job_id}/download")
        assert early.status_code == 400 and early.json()["error_code"] == "result_not_ready"
        assert (await http.get(f"/jobs/{job_id}/metadata")).status_code == 400

        # DELETE of a job that has not ended cancels it
        deleted = await http.delete(f"/jobs/{job_id}")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["success"] is True and deleted.json()["message"]

        # and the poll loop ends on cancelled
        job = await poll_like_deepseek(http, job_id)
        assert job["status"] == "cancelled" and job["error"]

        # Once ended, a second DELETE removes it, as pagewire's own DELETE does
        assert (await http.delete(f"/jobs/{job_id}")).status_code == 204
        assert (await http.get(f"/jobs/{job_id}")).status_code == 404


# --- slimgest ----------------------------------------------------------------------------------


async def test_slimgest_status_is_json_for_programs_and_the_page_for_browsers(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as anonymous:
        program = await anonymous.get("/", headers={"Accept": "application/json"})
        curl = await anonymous.get("/", headers={"Accept": "*/*"})
        browser = await anonymous.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})

    assert program.status_code == 200 and curl.json()["status"] == "ok"
    status = program.json()
    assert status["status"] == "ok"
    assert status["workers"]["alive"] >= 1 and status["workers"]["total"] >= status["workers"]["alive"]
    assert isinstance(status["queue_size"], int)
    assert browser.headers["content-type"].startswith("text/html") and "EventSource" in browser.text


async def test_slimgest_job_status_has_its_fields(gateway: Gateway) -> None:
    pdf = text_pdf([lines(["slimgest waits for this."])])
    async with gateway.client() as http:
        done = await http.post("/process-pdf", files={"file": ("one.pdf", pdf, "application/pdf")})
        job_id = done.json()["pdfs"][0]["job_id"]
        job = (await http.get(f"/jobs/{job_id}")).json()

    assert job["status"] == "completed" and job["has_result"] is True and job["error"] is None
    assert job["created_at"] and job["completed_at"]


@pytest.mark.ocr
async def test_slimgest_batch_stream_reads_images_and_reports_a_broken_one(gateway: Gateway) -> None:
    good = base64.b64encode(text_image("Batch page 42")).decode()
    broken = base64.b64encode(text_image("never read")[:100]).decode()
    body = {"images": [{"page_number": 7, "image_base64": good}, {"page_number": 8, "image_base64": broken}]}

    async with gateway.client() as http, http.stream("POST", "/process-batch-stream", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        items = await asyncio.wait_for(_collect(read_sse(response, {"complete", "error"})), 120)

    names = [name for name, _ in items]
    assert names == ["start", "page_error", "page", "complete"], items
    assert items[1][1]["page_number"] == 8 and items[1][1]["error_code"] == "bad_image"
    page = items[2][1]
    assert page["page_number"] == 7 and "42" in page["ocr_text"] and page["raw_ocr_results"]
    assert items[3][1]["pages_processed"] == 1


async def _collect(items: Any) -> list[tuple[str, dict[str, Any]]]:
    return [item async for item in items]


async def test_slimgest_batch_stream_refuses_more_than_64_images(gateway: Gateway) -> None:
    image = base64.b64encode(text_image("x")).decode()
    body = {"images": [{"page_number": n, "image_base64": image} for n in range(65)]}
    async with gateway.client() as http:
        response = await http.post("/process-batch-stream", json=body)
    assert response.status_code == 422 and response.json()["error_code"] == "malformed_message"


# --- images as input ---------------------------------------------------------------------------


@pytest.mark.ocr
async def test_an_image_upload_is_read_as_a_page_and_bad_images_get_their_codes(gateway: Gateway) -> None:
    big = io.BytesIO()
    Image.new("L", (1200, 1000), 255).save(big, "PNG")
    async with gateway.client() as http:
        accepted = await http.post(
            "/jobs", files={"file": ("photo.jpg", text_image("Photo 1234", "JPEG"), "image/jpeg")}
        )
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]

        broken = await http.post("/jobs", files={"file": ("cut.png", text_image("cut")[:120], "image/png")})
        too_large = await http.post("/jobs", files={"file": ("big.png", big.getvalue(), "image/png")})

        job = await poll_like_deepseek(http, job_id)
        text = (await http.get(f"/jobs/{job_id}/result", params={"format": "md"})).text

    assert broken.status_code == 422 and broken.json()["error_code"] == "bad_image"
    assert too_large.status_code == 413 and too_large.json()["error_code"] == "image_too_large"
    assert job["status"] == "completed" and job["filename"] == "photo.jpg" and job["total_pages"] == 1
    assert "1234" in text


# --- the thin client: pagewire --api URL ------------------------------------------------------------


def pagewire(gateway: Gateway, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The ``pagewire`` command with only the gateway's URL and key: no broker, database or S3 settings."""
    env = {"PAGEWIRE_API_KEY": gateway.api_key, "PAGEWIRE_AMQP_URL": "amqp://nobody@127.0.0.1:1/"}
    return pagewire_command("--api", gateway.url, *args, env=env, timeout=timeout)


def test_the_cli_runs_through_the_gateway(gateway: Gateway, tmp_path: Path) -> None:
    source = tmp_path / "notes.pdf"
    source.write_bytes(text_pdf([lines(["Through the gateway, by --api."])]))

    submitted = pagewire(gateway, "submit", str(source), "--wait", "--json")
    assert submitted.returncode == 0, submitted.stderr
    row = json.loads(submitted.stdout.splitlines()[-1])
    job_id = row["job_id"]
    assert row["status"] == "completed" and row["total_pages"] == 1

    status = pagewire(gateway, "status", job_id)
    assert status.returncode == 0 and "completed" in status.stdout

    result = pagewire(gateway, "result", job_id)
    assert result.returncode == 0 and "Through the gateway, by --api." in result.stdout

    listed = pagewire(gateway, "jobs", "--limit", "50")
    assert listed.returncode == 0 and job_id in listed.stdout and "notes.pdf" in listed.stdout

    watched = pagewire(gateway, "watch", job_id)
    assert watched.returncode == 0, watched.stderr

    retried = pagewire(gateway, "retry", job_id)
    assert retried.returncode == 0 and "has no failed pages" in retried.stderr

    ended = pagewire(gateway, "cancel", job_id)
    assert ended.returncode == 1 and "already ended" in ended.stderr

    missing = pagewire(gateway, "status", "no-such-job")
    assert missing.returncode == 4 and "job_not_found" in missing.stderr

    unreachable = pagewire_command("--api", "http://127.0.0.1:1", "status", job_id, env={}, timeout=60)
    assert unreachable.returncode == 3, unreachable.stderr


@pytest.mark.ocr
async def test_the_python_api_submits_an_image_under_its_own_name(stack: Stack, tmp_path: Path) -> None:
    from producer.api import Client

    image = tmp_path / "receipt.png"
    image.write_bytes(text_image("Receipt total 4711"))
    async with Client(stack.settings) as client, client.subscribe() as events:
        request = await client.submit(image)
        ends = [e.type async for e in events.for_jobs({request.job_id})]
        row = await client.final_status(request.job_id)
        text = (await client.result(request.job_id)).decode()

    assert request.metadata["filename"] == "receipt.png" and ends[-1] == "JobCompleted"
    assert row["status"] == "completed" and row["total_pages"] == 1 and "4711" in text
