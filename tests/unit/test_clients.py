"""The pure parts of serving other clients: status words, client fields, --api parsing, HttpClient's errors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from pagewire.cli import _command_in, parse_args
from producer.http_client import GatewayError, HttpClient
from producer.web.views import with_client_fields
from schemas.errors import ErrorCode, PermanentError
from schemas.settings import ClientSettings

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(status: str, **extra: Any) -> dict[str, Any]:
    base = {
        "job_id": "j1",
        "status": status,
        "total_pages": 4,
        "pages_done": 2,
        "error_code": None,
        "error_message": None,
        "metadata": {"filename": "scan.png"},
        "result_keys": None,
        "finished_at": None,
    }
    return base | extra


@pytest.mark.parametrize(
    ("status", "api", "shown"),
    [
        ("running", "deepseek", "processing"),
        ("completed_with_errors", "deepseek", "completed"),
        ("failed", "deepseek", "failed"),
        ("running", None, "running"),
        ("completed_with_errors", None, "completed_with_errors"),
    ],
)
def test_a_job_speaks_the_words_of_the_door_it_came_in_by(status: str, api: str | None, shown: str) -> None:
    metadata = {"filename": "a.pdf", **({"api": api} if api else {})}
    view = with_client_fields(row(status, metadata=metadata, result_keys={"md": "k"}), dialect=True)
    assert (view["status"], view["pagewire_status"]) == (shown, status)
    # and lists keep pagewire's words
    assert with_client_fields(row(status, metadata=metadata))["status"] == status


def test_a_deepseek_job_reads_processing_until_its_result_is_written() -> None:
    ended = row("completed", metadata={"api": "deepseek"}, result_keys=None)
    assert with_client_fields(ended, dialect=True)["status"] == "processing"
    written = ended | {"result_keys": {"md": "jobs/j1/result.md"}}
    assert with_client_fields(written, dialect=True)["status"] == "completed"


def test_client_fields() -> None:
    running = with_client_fields(row("running"))
    assert (running["progress"], running["processed_pages"], running["filename"], running["error"]) == (
        50.0,
        2,
        "scan.png",
        None,
    )
    done = with_client_fields(row("completed_with_errors", error_code="ocr_failed", result_keys={"md": "k"}))
    assert (done["progress"], done["has_result"], done["error"]) == (100.0, True, "ocr_failed")
    dropped = with_client_fields(row("queued", metadata={"dropfolder_key": "inbox/a/b.tiff"}, total_pages=None))
    assert (dropped["filename"], dropped["progress"]) == ("b.tiff", 0.0)


def test_the_api_option_and_its_value_are_not_the_subcommand() -> None:
    assert _command_in(["--api", "http://h", "jobs", "--limit", "3"]) == "jobs"
    assert _command_in(["--api", "jobs", "status", "J"]) is None  # a URL that happens to read "jobs"
    args = parse_args(["--api", "http://h:8080", "jobs", "--limit", "3"])
    assert (args.api, args.command, args.limit) == ("http://h:8080", "jobs", 3)
    assert parse_args(["status", "J"]).api is None


def gateway(handler: Any) -> HttpClient:
    settings = ClientSettings(api_url="http://gw", api_key="k")
    return HttpClient(settings, transport=httpx.MockTransport(handler))


async def test_http_client_maps_answers_to_what_the_direct_client_gives() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/jobs/gone":
            return httpx.Response(404, json={"error_code": "job_not_found", "message": "no job 'gone'"})
        if request.url.path == "/jobs/down":
            return httpx.Response(503, json={"error_code": "service_unavailable", "message": "broker"})
        body = {"job_id": "j1", "status": "processing", "pagewire_status": "running", "created_at": T0.isoformat()}
        return httpx.Response(200, json=body)

    async with gateway(handler) as client:
        status = await client.status("j1")
        with pytest.raises(GatewayError) as missing:
            await client.status("gone")
        with pytest.raises(ConnectionError):
            await client.status("down")

    assert (status["status"], status["created_at"]) == ("running", T0)
    assert (missing.value.code, missing.value.status) == ("job_not_found", 404)
    assert seen[0].headers["X-API-Key"] == "k"


async def test_http_client_unreachable_is_a_connection_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with gateway(handler) as client:
        with pytest.raises(ConnectionError):
            await client.result("j1")


async def test_http_submit_sends_the_file_and_a_repeated_idempotency_key_finds_the_job() -> None:
    from producer.http_client import idempotent_job_id

    sent: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        if len(sent) == 1:
            return httpx.Response(202, json={"job_id": idempotent_job_id("k-1"), "status": "queued", "links": {}})
        return httpx.Response(409, json={"error_code": "job_exists", "message": "exists"})

    async with gateway(handler) as client:
        first = await client.submit(b"%PDF-1.7 ...", idempotency_key="k-1", filename="a.pdf")
        again = await client.submit(b"%PDF-1.7 ...", idempotency_key="k-1", filename="a.pdf")
        with pytest.raises(GatewayError):
            await client.submit(b"%PDF-1.7 ...", filename="a.pdf")

    assert first.job_id == again.job_id == idempotent_job_id("k-1")
    assert b'filename="a.pdf"' in sent[0] and idempotent_job_id("k-1").encode() in sent[0]


@pytest.mark.parametrize("job_id", ["../health", "bad id!", "a/b", "..", "x" * 65])
async def test_http_client_an_id_no_job_can_have_is_job_not_found_without_a_request(job_id: str) -> None:
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(200, json={})

    async with gateway(answer) as client:
        for call in (client.status(job_id), client.result(job_id), client.cancel(job_id), client.retry(job_id)):
            with pytest.raises(PermanentError) as raised:
                await call
            assert raised.value.code == ErrorCode.JOB_NOT_FOUND
    assert asked == []
