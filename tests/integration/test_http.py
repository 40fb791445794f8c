"""``pagewire http`` against the real services: every route, the slimgest routes, and a schemathesis run.

One stack of real roles (planner, worker, recorder) and one real gateway
process (``python -m producer.web``, an admin API key set, uploads capped at 2 MB)
serve this module. Tests talk HTTP only and check what a client sees: status
codes, JSON bodies and their error codes, server-sent events, and the rows and
S3 objects that a DELETE removes.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest

from tests.integration.http_gateway import Gateway, read_sse, running_gateway, running_stack
from tests.integration.stack import Stack, peak_rss_mib
from tools.samples import lines, scanned_pdf, text_pdf

MAX_UPLOAD = 2_000_000
MIB = 1024 * 1024
PAGE_TEXT = ["pagewire reads this page.", "Over HTTP, with events."]


def two_pages(tag: str = "") -> bytes:
    return text_pdf([lines([f"{PAGE_TEXT[0]} {tag}".strip()]), lines([PAGE_TEXT[1]])])


@pytest.fixture(scope="module")
def stack(services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(services, tmp_path_factory.mktemp("roles")) as stack:
        yield stack


@pytest.fixture(scope="module")
def gateway(stack: Stack) -> Iterator[Gateway]:
    with running_gateway(stack, {"PAGEWIRE_HTTP_MAX_UPLOAD_BYTES": str(MAX_UPLOAD)}) as gateway:
        yield gateway


def s3(services: Any) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=services.s3_endpoint_url,
        aws_access_key_id=services.access_key,
        aws_secret_access_key=services.secret_key,
        region_name="us-east-1",
    )


async def upload(http: httpx.AsyncClient, pdf: bytes, **fields: str) -> str:
    response = await http.post("/jobs", files={"file": ("doc.pdf", pdf, "application/pdf")}, data=fields)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


async def events_of(http: httpx.AsyncClient, job_id: str, wait_s: float = 60) -> list[tuple[str, dict[str, Any]]]:
    """Every SSE event of a job until its end."""

    async def collect() -> list[tuple[str, dict[str, Any]]]:
        async with http.stream("GET", f"/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            return [item async for item in read_sse(response, {"complete", "error"})]

    return await asyncio.wait_for(collect(), wait_s)


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) <= {"error_code", "message", "job_id"} and body["message"]
    return str(body["error_code"])


# --- the service ------------------------------------------------------------------------


async def test_health_and_openapi_need_no_key(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as anonymous:
        health = await anonymous.get("/health")
        document = (await anonymous.get("/openapi.json")).json()
        page = await anonymous.get("/", headers={"Accept": "text/html"})

    assert health.status_code == 200
    assert health.json() == {"status": "ok", "checks": dict.fromkeys(["broker", "events", "database", "storage"], True)}
    paths = set(document["paths"])
    assert {
        "/jobs",
        "/jobs/{job_id}",
        "/jobs/{job_id}/events",
        "/jobs/{job_id}/result",
        "/jobs/{job_id}/cancel",
    } <= paths
    assert {"/process-pdf", "/process-pdfs", "/process-pdf-stream", "/health", "/events"} <= paths
    assert set(document["paths"]["/jobs"]["post"]["requestBody"]["content"]) == {
        "multipart/form-data",
        "application/json",
    }
    assert page.status_code == 200 and "EventSource" in page.text


async def test_an_api_key_is_required(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as anonymous:
        missing = await anonymous.get("/jobs")
        wrong = await anonymous.get("/jobs", headers={"X-API-Key": "not-the-key"})
        bearer = await anonymous.get("/jobs", headers={"Authorization": f"Bearer {gateway.api_key}"})
        query = await anonymous.get("/jobs", params={"api_key": gateway.api_key})

    assert error_of(missing, 401) == "unauthorized" and missing.headers["www-authenticate"] == "Bearer"
    assert error_of(wrong, 401) == "unauthorized"
    assert bearer.status_code == 200
    # A key in the URL ends up in access logs: refused, with a word on what to do instead.
    assert error_of(query, 401) == "unauthorized" and "X-API-Key" in query.json()["message"]


# --- a job's life ------------------------------------------------------------------------


async def test_an_upload_is_queued_at_once_streamed_and_its_result_served(gateway: Gateway) -> None:
    async with gateway.client() as http:
        # Given a two-page born-digital PDF, uploaded with options as form fields
        response = await http.post(
            "/jobs",
            files={"file": ("two.pdf", two_pages(), "application/pdf")},
            data={"engine": "text", "submitted_by": "test_http"},
        )
        # Then it is accepted at once, with where to follow it
        assert response.status_code == 202
        job_id = response.json()["job_id"]
        assert response.headers["location"] == f"/jobs/{job_id}"
        assert response.json()["links"]["events"] == f"/jobs/{job_id}/events"

        # When its events are followed
        items = await events_of(http, job_id)

        # Then the stream says start, each page once with its text and progress, then complete
        names = [name for name, _ in items]
        assert names == ["start", "page", "page", "complete"]
        pages = sorted((d for n, d in items if n == "page"), key=lambda d: d["page_no"])
        assert [p["status"] for p in pages] == ["completed", "completed"]
        assert PAGE_TEXT[0] in pages[0]["text"] and PAGE_TEXT[1] in pages[1]["text"]
        assert items[-2][1]["pages_done"] == 2 and items[-2][1]["percent"] == 100.0
        complete = items[-1][1]
        assert complete["status"] == "completed" and complete["percent"] == 100.0
        assert complete["links"] == {
            "json": f"/jobs/{job_id}/result?format=json",
            "md": f"/jobs/{job_id}/result?format=md",
        }

        # and the job, its pages and its results read back
        job = (await http.get(f"/jobs/{job_id}")).json()
        assert (job["status"], job["total_pages"], job["pages_ok"], job["percent"]) == ("completed", 2, 2, 100.0)
        assert job["metadata"] == {"filename": "two.pdf"} and job["submitted_by"] == "test_http"
        assert [(p["page_no"], p["status"], p["engine"]) for p in job["pages"]] == [
            (1, "completed", "text"),
            (2, "completed", "text"),
        ]
        markdown = await http.get(complete["links"]["md"])
        assert markdown.headers["content-type"].startswith("text/markdown")
        assert PAGE_TEXT[0] in markdown.text and PAGE_TEXT[1] in markdown.text
        document = (await http.get(complete["links"]["json"])).json()
        assert [p["page_no"] for p in document["pages"]] == [1, 2]

        # and a client that connects again gets the whole story again, from the tables
        again = await events_of(http, job_id)
        assert [n for n, _ in again] == ["start", "page", "page", "complete"]


async def test_a_pdf_already_in_s3_is_queued_by_json(gateway: Gateway, services: Any) -> None:
    key = f"inbox/{secrets.token_hex(4)}.pdf"
    await asyncio.to_thread(s3(services).put_object, Bucket=services.bucket, Key=key, Body=two_pages("s3"))

    async with gateway.client() as http:
        response = await http.post(
            "/jobs", json={"source": {"bucket": services.bucket, "key": key}, "options": {"engine": "text"}}
        )
        assert response.status_code == 202, response.text
        items = await events_of(http, response.json()["job_id"])

        assert items[-1][0] == "complete" and items[-1][1]["pages_ok"] == 2
        job = (await http.get(f"/jobs/{response.json()['job_id']}")).json()
        assert (job["source_bucket"], job["source_key"]) == (services.bucket, key)


async def test_bad_json_requests_get_the_table_codes(gateway: Gateway, services: Any) -> None:
    bucket = services.bucket
    async with gateway.client() as http:
        escape = await http.post("/jobs", json={"source": {"bucket": bucket, "key": "a/../b.pdf"}})
        elsewhere = await http.post("/jobs", json={"source": {"bucket": "someone-else", "key": "b.pdf"}})
        missing = await http.post("/jobs", json={"source": {"bucket": bucket, "key": "inbox/none.pdf"}})
        options = await http.post("/jobs", json={"source": {"bucket": bucket, "key": "x.pdf"}, "options": {"dpi": 5}})
        garbage = await http.post("/jobs", content=b"{not json", headers={"content-type": "application/json"})
        text = await http.post("/jobs", content=b"hello", headers={"content-type": "text/plain"})

    assert error_of(escape, 400) == "invalid_key"
    assert error_of(elsewhere, 403) == "bucket_not_allowed"
    assert error_of(missing, 422) == "source_missing"
    assert error_of(options, 422) == "malformed_message" and "dpi" in options.json()["message"]
    assert error_of(garbage, 422) == "malformed_message"
    assert error_of(text, 415) == "unsupported_media_type"


async def test_uploads_are_checked_before_anything_is_queued(gateway: Gateway) -> None:
    async with gateway.client() as http:
        as_text = await http.post("/jobs", files={"file": ("a.txt", b"%PDF-1.4", "text/plain")})
        not_pdf = await http.post("/jobs", files={"file": ("a.pdf", b"GIF89a...", "application/pdf")})
        empty = await http.post("/jobs", files={"file": ("a.pdf", b"", "application/pdf")})
        no_file = await http.post(
            "/jobs", data={"engine": "text"}, files={"other": ("a.pdf", b"%PDF-", "application/pdf")}
        )
        too_big = await http.post(
            "/jobs", files={"file": ("big.pdf", b"%PDF-1.4\n" + b"0" * MAX_UPLOAD, "application/pdf")}
        )
        bad_option = await http.post(
            "/jobs", files={"file": ("a.pdf", two_pages(), "application/pdf")}, data={"dpi": "9000"}
        )
        job_id = await upload(http, two_pages(), engine="text")
        same_id = await http.post(
            "/jobs", files={"file": ("a.pdf", two_pages(), "application/pdf")}, data={"job_id": job_id}
        )

    assert error_of(as_text, 415) == "not_a_pdf"
    assert error_of(not_pdf, 415) == "not_a_pdf"
    assert error_of(empty, 422) == "empty_file"
    assert error_of(no_file, 422) == "malformed_message"
    assert error_of(too_big, 413) == "file_too_large"
    assert error_of(bad_option, 422) == "invalid_options"
    assert error_of(same_id, 409) == "job_exists"


async def test_a_large_upload_goes_to_s3_in_parts_without_being_held_in_memory(stack: Stack, services: Any) -> None:
    # Given a gateway that takes uploads of 64 MiB, and an upload of 48 MiB
    body = b"%PDF-1.4\n" + os.urandom(48 * MIB)
    with running_gateway(stack, {"PAGEWIRE_HTTP_MAX_UPLOAD_BYTES": str(64 * MIB)}) as large:
        async with large.client() as http:
            # (after one small upload: the first request's imports and pools are not the upload's)
            await upload(http, two_pages("warm"), engine="text", submitted_by="large-upload")
            before = peak_rss_mib(large.process.pid)
            job_id = await upload(http, body, engine="text", submitted_by="large-upload")
        grown = peak_rss_mib(large.process.pid) - before

    # Then S3 holds it whole, sent in parts of 5 MiB, and the gateway never held it
    source = s3(services).get_object(Bucket=stack.settings.s3_bucket, Key=f"jobs/{job_id}/source.pdf")
    assert source["Body"].read() == body
    assert source["ETag"].strip('"').endswith("-10")
    assert grown < 24, f"the gateway's peak memory grew by {grown:.0f} MiB for a 48 MiB upload"


async def test_jobs_are_listed_newest_first_with_filters_and_pages(gateway: Gateway) -> None:
    who = f"lister-{secrets.token_hex(3)}"
    async with gateway.client() as http:
        ids = [await upload(http, two_pages(str(i)), engine="text", submitted_by=who) for i in range(3)]
        for job_id in ids:
            await events_of(http, job_id)

        first = (await http.get("/jobs", params={"submitted_by": who, "limit": 2})).json()
        second = (
            await http.get("/jobs", params={"submitted_by": who, "limit": 2, "cursor": first["next_cursor"]})
        ).json()
        done = (await http.get("/jobs", params={"submitted_by": who, "status": ["completed", "failed"]})).json()
        running = (await http.get("/jobs", params={"submitted_by": who, "status": "running"})).json()
        bad_cursor = await http.get("/jobs", params={"cursor": "nonsense"})
        bad_status = await http.get("/jobs", params={"status": "sleeping"})

    assert [j["job_id"] for j in first["jobs"] + second["jobs"]] == ids[::-1]
    assert first["next_cursor"] and second["next_cursor"] is None
    assert len(done["jobs"]) == 3 and all(j["percent"] == 100.0 for j in done["jobs"])
    assert running["jobs"] == []
    assert error_of(bad_cursor, 422) == "malformed_message"
    assert error_of(bad_status, 422) == "malformed_message"


async def test_an_unknown_job_is_job_not_found_everywhere(gateway: Gateway) -> None:
    async with gateway.client() as http:
        answers = [
            await http.get("/jobs/no-such-job"),
            await http.get("/jobs/no-such-job/events"),
            await http.get("/jobs/no-such-job/result"),
            await http.post("/jobs/no-such-job/cancel"),
            await http.delete("/jobs/no-such-job"),
        ]
        route = await http.get("/no/such/route")

    assert [error_of(a, 404) for a in answers] == ["job_not_found"] * 5
    assert error_of(route, 404) == "not_found"


@pytest.mark.ocr
async def test_a_running_job_is_cancelled_then_deleted_with_its_files(gateway: Gateway, services: Any) -> None:
    # Given a job of scanned pages, read by OCR (seconds a page)
    scan = scanned_pdf([lines([f"Scanned page {n} of a job to cancel."]) for n in range(1, 4)])
    async with gateway.client() as http:
        job_id = await upload(http, scan, engine="rapidocr")

        # While it runs there is no result yet
        assert error_of(await http.get(f"/jobs/{job_id}/result"), 409) == "result_not_ready"

        # When it is cancelled
        cancel = await http.post(f"/jobs/{job_id}/cancel", json={"reason": "changed my mind"})
        assert cancel.status_code == 202 and cancel.json() == {"job_id": job_id, "status": "cancelling"}

        # Then its stream ends with an error event that says cancelled, and the row agrees
        items = await events_of(http, job_id)
        assert items[-1] == (
            "error",
            {"job_id": job_id, "status": "cancelled", "error_code": None, "message": "changed my mind"},
        )
        assert (await http.get(f"/jobs/{job_id}")).json()["status"] == "cancelled"
        assert error_of(await http.post(f"/jobs/{job_id}/cancel"), 409) == "job_finished"

        # When it is deleted, its rows and its S3 objects are gone
        objects = await asyncio.to_thread(
            s3(services).list_objects_v2, Bucket=services.bucket, Prefix=f"jobs/{job_id}/"
        )
        assert objects.get("KeyCount", 0) >= 1
        assert (await http.delete(f"/jobs/{job_id}")).status_code == 204
        assert error_of(await http.get(f"/jobs/{job_id}"), 404) == "job_not_found"
        objects = await asyncio.to_thread(
            s3(services).list_objects_v2, Bucket=services.bucket, Prefix=f"jobs/{job_id}/"
        )
        assert objects.get("KeyCount", 0) == 0


async def test_a_finished_job_is_deleted_with_its_results(gateway: Gateway, services: Any) -> None:
    async with gateway.client() as http:
        job_id = await upload(http, two_pages("delete me"), engine="text")
        await events_of(http, job_id)
        keys = [
            o["Key"] for o in s3(services).list_objects_v2(Bucket=services.bucket, Prefix=f"jobs/{job_id}/")["Contents"]
        ]
        assert sorted(keys) == [f"jobs/{job_id}/result.json", f"jobs/{job_id}/result.md", f"jobs/{job_id}/source.pdf"]

        assert (await http.delete(f"/jobs/{job_id}")).status_code == 204

        assert error_of(await http.get(f"/jobs/{job_id}"), 404) == "job_not_found"
        assert s3(services).list_objects_v2(Bucket=services.bucket, Prefix=f"jobs/{job_id}/").get("KeyCount") == 0


async def test_the_all_jobs_stream_carries_progress_without_text(gateway: Gateway) -> None:
    async with gateway.client() as http, http.stream("GET", "/events") as stream:
        job_id = await upload(http, two_pages("global"), engine="text")

        async def collect() -> list[tuple[str, dict[str, Any]]]:
            seen = []
            async for name, data in read_sse(stream, set()):
                if data.get("job_id") == job_id:
                    seen.append((name, data))
                    if name in ("complete", "error"):
                        return seen
            return seen

        items = await asyncio.wait_for(collect(), 60)

    assert [n for n, _ in items] == ["queued", "start", "page", "page", "complete"]
    assert all("text" not in d for _, d in items)
    assert items[-1][1]["percent"] == 100.0


# --- slimgest's routes ------------------------------------------------------------------------


async def test_process_pdf_waits_and_answers_like_slimgest(gateway: Gateway) -> None:
    async with gateway.client() as http:
        response = await http.post(
            "/process-pdf", params={"dpi": 150}, files={"file": ("one.pdf", two_pages(), "application/pdf")}
        )
        broken = await http.post("/process-pdf", files={"file": ("broken.pdf", two_pages()[:300], "application/pdf")})

    assert response.status_code == 200, response.text
    (pdf,) = response.json()["pdfs"]
    assert pdf["filename"] == "one.pdf" and pdf["status"] == "completed"
    assert [p["page_number"] for p in pdf["pages"]] == [1, 2]
    assert PAGE_TEXT[1] in pdf["pages"][1]["ocr_text"]
    assert pdf["pages"][0]["raw_ocr_results"] and "bbox" in pdf["pages"][0]["raw_ocr_results"][0]
    assert error_of(broken, 422) == "truncated_pdf"


async def test_process_pdfs_reads_several_side_by_side(gateway: Gateway) -> None:
    files = [("files", (f"{n}.pdf", two_pages(n), "application/pdf")) for n in ("a", "b")]
    async with gateway.client() as http:
        response = await http.post("/process-pdfs", files=files, data={"dpi": "100"})

    assert response.status_code == 200, response.text
    pdfs = response.json()["pdfs"]
    assert [p["filename"] for p in pdfs] == ["a.pdf", "b.pdf"]
    assert all(p["status"] == "completed" and len(p["pages"]) == 2 for p in pdfs)
    assert "a" in pdfs[0]["pages"][0]["ocr_text"].split() and "b" in pdfs[1]["pages"][0]["ocr_text"].split()


async def test_process_pdf_stream_sends_slimgest_events(gateway: Gateway) -> None:
    async with (
        gateway.client() as http,
        http.stream(
            "POST", "/process-pdf-stream", files={"file": ("s.pdf", two_pages(), "application/pdf")}
        ) as response,
    ):
        assert response.status_code == 200
        items = await asyncio.wait_for(_collect(read_sse(response, {"complete", "error"})), 60)

    assert [n for n, _ in items] == ["start", "page", "page", "complete"]
    assert items[0][1]["status"] == "processing" and items[0][1]["pdf"] == "s.pdf"
    assert sorted(d["total_pages_so_far"] for n, d in items if n == "page") == [1, 2]
    assert all("page_number" in d and "page_text" in d for n, d in items if n == "page")
    complete = items[-1][1]
    assert complete["status"] == "complete" and complete["total_pages"] == 2 and complete["pdf_name"] == "s.pdf"
    assert [p["page_number"] for p in complete["pages"]] == [1, 2]


async def _collect(items: Any) -> list[tuple[str, dict[str, Any]]]:
    return [item async for item in items]


# --- the OpenAPI document, fuzzed --------------------------------------------------------------


def test_schemathesis_finds_no_server_error_or_undocumented_answer(gateway: Gateway, tmp_path: Any) -> None:
    """Generated requests against every non-streaming route: no 5xx, every status, type and body as documented."""
    cli = shutil.which("schemathesis", path=str(sys.executable).rsplit("/", 1)[0]) or "schemathesis"
    result = subprocess.run(
        [
            cli,
            "run",
            f"{gateway.url}/openapi.json",
            "--header",
            f"X-API-Key: {gateway.api_key}",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            # The streams never end on their own, and the slimgest routes wait for whole jobs.
            "--exclude-path-regex",
            "events|process-pdf|process-batch",
            "--max-examples",
            "25",
            "--phases",
            "examples,coverage,fuzzing",
            "--request-timeout",
            "30",
            "--seed",
            "1",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout.lower()
