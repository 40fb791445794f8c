"""``pagewire http`` in front of several teams: keys, ownership, stream tokens, limits, and refusing to run open.

One stack of real roles and one real gateway with four keys serve most of the
module: ``test-admin`` (admin), ``team-a`` and ``team-b`` (submit), and
``tight`` (a submit key with limits of one). Tests talk HTTP only and check
what a client sees: status codes and error codes, which jobs a list holds,
server-sent events, and the gateway's own log.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from producer.api import Client
from schemas.messages import JobOptions
from schemas.settings import ClientSettings
from tests.integration.http_gateway import Gateway, new_key, read_sse, running_gateway, running_stack
from tests.integration.stack import REPO_ROOT, Stack
from tools import devstack
from tools.samples import lines, text_pdf

TOKEN_TTL_S = 3
KEYS: list[dict[str, Any]] = [
    {"name": "team-a", "key": new_key(), "role": "submit"},
    {"name": "team-b", "key": new_key()},
    {"name": "tight", "key": new_key(), "max_streams": 1, "max_uploads": 1, "max_priority": 2},
]


def pdf(tag: str) -> bytes:
    return text_pdf([lines([f"A page of {tag}."])])


@pytest.fixture(scope="module")
def stack(services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(services, tmp_path_factory.mktemp("roles")) as stack:
        yield stack


@pytest.fixture(scope="module")
def gateway(stack: Stack) -> Iterator[Gateway]:
    env = {
        "PAGEWIRE_HTTP_STREAM_TOKEN_TTL_S": str(TOKEN_TTL_S),
        "PAGEWIRE_HTTP_ALLOWED_HOSTS": json.dumps(["127.0.0.1", "localhost"]),
        "PAGEWIRE_HTTP_CORS_ORIGINS": json.dumps(["https://ops.example"]),
    }
    with running_gateway(stack, env, keys=KEYS) as gateway:
        yield gateway


async def upload(http: httpx.AsyncClient, tag: str, **fields: str) -> str:
    response = await http.post("/jobs", files={"file": (f"{tag}.pdf", pdf(tag), "application/pdf")}, data=fields)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


async def until_done(http: httpx.AsyncClient, job_id: str, wait_s: float = 120) -> list[tuple[str, dict[str, Any]]]:
    async def collect() -> list[tuple[str, dict[str, Any]]]:
        async with http.stream("GET", f"/jobs/{job_id}/events", params={"text": "false"}) as response:
            assert response.status_code == 200, await response.aread()
            return [item async for item in read_sse(response, {"complete", "error"})]

    return await asyncio.wait_for(collect(), wait_s)


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return str(response.json()["error_code"])


async def listed(http: httpx.AsyncClient) -> set[str]:
    response = await http.get("/jobs", params={"limit": 200})
    assert response.status_code == 200, response.text
    return {j["job_id"] for j in response.json()["jobs"]}


# --- ownership ------------------------------------------------------------------------


async def test_a_key_cannot_reach_another_keys_job_by_any_route(gateway: Gateway) -> None:
    async with gateway.client("team-a") as a, gateway.client("team-b") as b, gateway.client() as admin:
        # Given a job team-a queued, and one team-b queued, both finished
        job_a = await upload(a, "team a")
        job_b = await upload(b, "team b")
        await until_done(a, job_a)
        await until_done(b, job_b)

        # When team-b tries every route on team-a's job
        tries = {
            "read": await b.get(f"/jobs/{job_a}"),
            "events": await b.get(f"/jobs/{job_a}/events"),
            "result": await b.get(f"/jobs/{job_a}/result"),
            "stream-token": await b.post(f"/jobs/{job_a}/stream-token"),
            "cancel": await b.post(f"/jobs/{job_a}/cancel"),
            "retry": await b.post(f"/jobs/{job_a}/retry"),
            "delete": await b.delete(f"/jobs/{job_a}"),
            "deepseek download": await b.get(f"/jobs/{job_a}/download"),
            "deepseek metadata": await b.get(f"/jobs/{job_a}/metadata"),
        }

        # Then each answers as if there were no such job, and the job is still there for team-a
        assert {route: error_of(r, 404) for route, r in tries.items()} == dict.fromkeys(tries, "job_not_found")
        assert (await a.get(f"/jobs/{job_a}")).json()["status"] == "completed"
        assert "A page of team a." in (await a.get(f"/jobs/{job_a}/result")).text

        # and each list holds its own key's jobs only, while the admin's holds both, with their owners
        assert job_a in await listed(a) and job_b not in await listed(a)
        assert job_b in await listed(b) and job_a not in await listed(b)
        assert {job_a, job_b} <= await listed(admin)
        jobs = (await admin.get("/jobs", params={"owner": "team-a", "limit": 200})).json()["jobs"]
        assert job_a in {j["job_id"] for j in jobs} and {j["owner"] for j in jobs} == {"team-a"}

        # and an admin key steers any job: reads it, and deletes it
        assert (await admin.get(f"/jobs/{job_b}")).json()["owner"] == "team-b"
        assert (await admin.delete(f"/jobs/{job_b}")).status_code == 204
        assert error_of(await b.get(f"/jobs/{job_b}"), 404) == "job_not_found"


@pytest.mark.ocr
async def test_a_key_cannot_cancel_another_keys_running_job(gateway: Gateway) -> None:
    from tools.samples import scanned_pdf

    scan = scanned_pdf([lines([f"Scanned page {n}, read slowly."]) for n in range(1, 4)])
    async with gateway.client("team-a") as a, gateway.client("team-b") as b:
        response = await a.post(
            "/jobs", files={"file": ("scan.pdf", scan, "application/pdf")}, data={"engine": "rapidocr"}
        )
        job_id = response.json()["job_id"]

        assert error_of(await b.post(f"/jobs/{job_id}/cancel"), 404) == "job_not_found"
        assert (await a.post(f"/jobs/{job_id}/cancel")).status_code == 202
        assert (await until_done(a, job_id))[-1][1]["status"] == "cancelled"


async def test_a_job_queued_without_the_gateway_is_for_admin_keys_only(gateway: Gateway, stack: Stack) -> None:
    # Given a job queued by the Python API (as a service or the drop folder does), with no key at all
    async with Client(ClientSettings.from_variables(stack.env)) as client:
        request = await client.submit(pdf("a service"), options=JobOptions(engine="text"))
    async with gateway.client("team-a") as a, gateway.client() as admin:
        # (the gateway knows it once the recorder has its row: a moment after the submit)
        for _ in range(300):
            if (await admin.get(f"/jobs/{request.job_id}")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        await until_done(admin, request.job_id)

        # Then a submit key neither sees it nor reaches it, and an admin key does both
        assert error_of(await a.get(f"/jobs/{request.job_id}"), 404) == "job_not_found"
        assert request.job_id not in await listed(a)
        job = (await admin.get(f"/jobs/{request.job_id}")).json()
        assert job["status"] == "completed" and job["owner"] is None


async def test_a_job_id_is_claimed_once_whoever_asks(gateway: Gateway) -> None:
    async with gateway.client("team-a") as a, gateway.client("team-b") as b:
        job_id = await upload(a, "claimed", job_id=f"claimed-{new_key()[:8]}")
        taken = await b.post("/jobs", files={"file": ("x.pdf", pdf("x"), "application/pdf")}, data={"job_id": job_id})

    assert error_of(taken, 409) == "job_exists"


async def test_no_key_or_a_wrong_key_is_401_on_every_route(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as anonymous:
        answers = [
            await anonymous.get("/jobs"),
            await anonymous.get("/jobs/x"),
            await anonymous.get("/jobs/x/events"),
            await anonymous.get("/events"),
            await anonymous.get("/jobs/x/result"),
            await anonymous.post("/jobs/x/cancel"),
            await anonymous.delete("/jobs/x"),
            await anonymous.post("/jobs/x/stream-token"),
            await anonymous.post("/jobs", files={"file": ("a.pdf", pdf("a"), "application/pdf")}),
            await anonymous.post("/process-pdf", files={"file": ("a.pdf", pdf("a"), "application/pdf")}),
            await anonymous.get("/jobs", headers={"X-API-Key": "x" * 32}),
        ]

    assert [error_of(a, 401) for a in answers] == ["unauthorized"] * len(answers)


# --- stream tokens ------------------------------------------------------------------------


async def test_a_stream_token_opens_its_own_jobs_stream_and_nothing_else(gateway: Gateway) -> None:
    async with gateway.client("team-a") as a, httpx.AsyncClient(base_url=gateway.url, timeout=60) as browser:
        job_id = await upload(a, "token")
        other = await upload(a, "other")
        issued = (await a.post(f"/jobs/{job_id}/stream-token")).json()
        assert issued["events"] == f"/jobs/{job_id}/events?token={issued['token']}"
        assert issued["token"] not in json.dumps(KEYS)

        # An EventSource (no headers) follows the job with the token alone
        async with browser.stream("GET", issued["events"]) as response:
            assert response.status_code == 200
            items = await asyncio.wait_for(_collect(read_sse(response, {"complete", "error"})), 60)
        assert items[-1][0] == "complete"

        # but the token opens no other job's stream, and no route but the events
        elsewhere = await browser.get(f"/jobs/{other}/events", params={"token": issued["token"]})
        not_events = await browser.get(f"/jobs/{job_id}", params={"token": issued["token"]})
        forged = await browser.get(f"/jobs/{job_id}/events", params={"token": issued["token"][:-2] + "xx"})
        assert error_of(elsewhere, 401) == "unauthorized" and "another stream" in elsewhere.json()["message"]
        assert error_of(not_events, 401) == "unauthorized"
        assert error_of(forged, 401) == "unauthorized"

        # and once its few seconds are over, not even its own
        await asyncio.sleep(TOKEN_TTL_S + 1.5)
        expired = await browser.get(f"/jobs/{job_id}/events", params={"token": issued["token"]})
        assert error_of(expired, 401) == "unauthorized" and "expired" in expired.json()["message"]

    # and the access log never holds it
    assert issued["token"] not in gateway.log()
    assert "token=REDACTED" in gateway.log()


async def test_the_all_jobs_stream_shows_a_key_its_own_jobs_only(gateway: Gateway) -> None:
    async with gateway.client("team-a") as a, gateway.client("team-b") as b:
        token = (await a.post("/events/stream-token")).json()
        async with (
            httpx.AsyncClient(base_url=gateway.url, timeout=60) as browser,
            browser.stream("GET", token["events"]) as stream,
        ):
            assert stream.status_code == 200
            theirs = await upload(b, "theirs")
            await until_done(b, theirs)
            ours = await upload(a, "ours")

            async def until_ours_ends() -> set[str | None]:
                seen: set[str | None] = set()
                async for name, data in read_sse(stream, set()):
                    seen.add(data.get("job_id"))
                    if data.get("job_id") == ours and name in ("complete", "error"):
                        break
                return seen

            seen = await asyncio.wait_for(until_ours_ends(), 120)

    assert ours in seen and theirs not in seen


# --- limits ------------------------------------------------------------------------


async def test_streams_beyond_the_keys_limit_get_429_until_one_closes(gateway: Gateway) -> None:
    async with gateway.client("tight") as tight:
        async with tight.stream("GET", "/events") as first:
            assert first.status_code == 200
            second = await tight.get("/events")
            assert error_of(second, 429) == "too_many_streams"
        # The slot comes back once the first stream is gone (the server notices within moments).
        deadline = time.monotonic() + 30
        while True:
            async with tight.stream("GET", "/events") as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the stream slot did not come back"
            await asyncio.sleep(0.3)


class SlowUpload:
    """An upload sent over a bare socket: headers and most of the body now, the end when told."""

    BOUNDARY = "pagewire-test"

    def __init__(self, gateway: Gateway, key: str) -> None:
        self.gateway, self.key = gateway, key
        self.head = (
            f'--{self.BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="slow.pdf"\r\n'
            "Content-Type: application/pdf\r\n\r\n"
        ).encode() + pdf("slow")
        self.tail = f"\r\n--{self.BOUNDARY}--\r\n".encode()

    async def start(self) -> None:
        port = int(self.gateway.url.rsplit(":", 1)[1])
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        request = (
            f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {self.key}\r\n"
            f"Content-Type: multipart/form-data; boundary={self.BOUNDARY}\r\n"
            f"Content-Length: {len(self.head) + len(self.tail)}\r\n\r\n"
        ).encode()
        self.writer.write(request + self.head)
        await self.writer.drain()

    async def turned_away(self) -> bool:
        """Whether the gateway has answered already (it does so before the end only to refuse)."""
        try:
            return bool(await asyncio.wait_for(self.reader.readline(), 0.2))
        except TimeoutError:
            return False

    async def finish(self) -> str:
        """Send the end; the status line of the answer."""
        self.writer.write(self.tail)
        await self.writer.drain()
        line = await asyncio.wait_for(self.reader.readline(), 60)
        self.writer.close()
        return line.decode().strip()


async def test_uploads_beyond_the_keys_limit_get_429(gateway: Gateway) -> None:
    async with gateway.client("tight") as tight, gateway.client("team-a") as a:
        # Given an upload of the tight key still arriving
        slow = SlowUpload(gateway, gateway.keys["tight"])
        await slow.start()
        # When the same key starts another, until the slow one has surely reached the gateway
        # (on a busy machine a try may come first; then the slow one is turned away and starts again)
        deadline = time.monotonic() + 60
        while (
            second := await tight.post("/jobs", files={"file": ("b.pdf", pdf("b"), "application/pdf")})
        ).status_code == 202:
            assert time.monotonic() < deadline, "the slow upload never held its slot"
            if await slow.turned_away():
                await slow.start()
            await asyncio.sleep(0.3)
        # and another key starts one
        other = await a.post("/jobs", files={"file": ("c.pdf", pdf("c"), "application/pdf")})
        done = await slow.finish()

    # Then the same key is refused, the other key is not, and the slow upload goes through
    assert error_of(second, 429) == "too_many_uploads"
    assert other.status_code == 202
    assert done.startswith("HTTP/1.1 202"), done


async def test_a_priority_above_the_keys_is_refused(gateway: Gateway, services: Any) -> None:
    async with gateway.client("team-a") as a, gateway.client("tight") as tight, gateway.client() as admin:
        high = await a.post("/jobs", files={"file": ("a.pdf", pdf("a"), "application/pdf")}, data={"priority": "5"})
        tight_json = await tight.post(
            "/jobs", json={"source": {"bucket": services.bucket, "key": "inbox/x.pdf"}, "priority": 3}
        )
        own_max = await a.post("/jobs", files={"file": ("a.pdf", pdf("a"), "application/pdf")}, data={"priority": "4"})
        admin_top = await admin.post(
            "/jobs", files={"file": ("a.pdf", pdf("a"), "application/pdf")}, data={"priority": "9"}
        )

    assert error_of(high, 403) == "priority_not_allowed"
    assert error_of(tight_json, 403) == "priority_not_allowed"
    assert own_max.status_code == 202 and admin_top.status_code == 202


async def test_a_json_body_is_capped_small(gateway: Gateway, services: Any) -> None:
    body = {"source": {"bucket": services.bucket, "key": "inbox/x.pdf"}, "metadata": {"note": "x" * 70_000}}
    async with gateway.client("team-a") as a:
        response = await a.post("/jobs", json=body)

    assert error_of(response, 413) == "message_too_large"


# --- what a browser meets ------------------------------------------------------------------------


async def test_a_foreign_host_is_refused_and_cors_answers_the_allowed_origin_only(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        foreign = await http.get("/health", headers={"Host": "rebound.example"})
        preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "X-API-Key"}
        allowed = await http.options("/jobs", headers={"Origin": "https://ops.example", **preflight})
        other = await http.options("/jobs", headers={"Origin": "https://elsewhere.example", **preflight})

    assert foreign.status_code == 400
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://ops.example"
    assert "access-control-allow-origin" not in other.headers


# --- secure by default ------------------------------------------------------------------------


def test_without_keys_the_gateway_refuses_to_start_and_says_how(stack: Stack) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGEWIRE_")} | stack.env
    result = subprocess.run(
        [sys.executable, "-m", "producer.web", "--port", str(devstack.free_port())],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "PAGEWIRE_API_KEYS" in result.stderr and "PAGEWIRE_HTTP_NO_AUTH=1" in result.stderr


async def test_run_open_on_purpose_everything_answers_without_a_key(stack: Stack) -> None:
    with running_gateway(stack, keys=[], no_auth=True, args=("--no-auth",)) as gateway:
        async with gateway.client() as http:
            job_id = await upload(http, "open")
            top = await upload(http, "top", priority="9")  # no key, so no key's cap on priority
            items = await until_done(http, job_id)
            legacy = await http.post("/process-pdf", files={"file": ("l.pdf", pdf("legacy"), "application/pdf")})
            listed_ids = await listed(http)
        log = gateway.log()

    assert items[-1][0] == "complete" and {job_id, top} <= listed_ids
    assert legacy.status_code == 200 and legacy.json()["pdfs"][0]["status"] == "completed"
    assert "WITHOUT API keys" in log


async def _collect(items: Any) -> list[tuple[str, dict[str, Any]]]:
    return [item async for item in items]
