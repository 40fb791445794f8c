"""What the gateway refuses at its door: strings the contract does not carry, ids that cannot be job ids.

Each refusal is a 422 with a code, before anything is uploaded or published, and the stack behind
the gateway goes on serving: a normal job submitted afterwards completes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.http_gateway import Gateway, running_gateway, running_stack
from tests.integration.stack import Stack
from tools.samples import lines, text_pdf


@pytest.fixture(scope="module")
def stack(services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(services, tmp_path_factory.mktemp("roles")) as stack:
        yield stack


@pytest.fixture(scope="module")
def gateway(stack: Stack) -> Iterator[Gateway]:
    with running_gateway(stack, {}) as gateway:
        yield gateway


async def test_hostile_strings_and_ids_are_refused_at_the_door(gateway: Gateway) -> None:
    pdf = text_pdf([lines(["a page that must still be read"])])
    async with gateway.client() as http:
        # Given a job that exists
        created = await http.post("/jobs", files={"file": ("ok.pdf", pdf, "application/pdf")}, data={"engine": "text"})
        assert created.status_code == 202, created.text
        job_id = created.json()["job_id"]

        # When strings carry a NUL or other control characters, or an id is only dots
        cancel_nul = await http.post(f"/jobs/{job_id}/cancel", json={"reason": "stop\u0000now"})
        cancel_bell = await http.post(f"/jobs/{job_id}/cancel", json={"reason": "ring\u0007"})
        dots = await http.get("/jobs/...")
        dots_upload = await http.post("/jobs", files={"file": ("x.pdf", pdf, "application/pdf")}, data={"job_id": ".."})
        nul_by = await http.post(
            "/jobs", files={"file": ("x.pdf", pdf, "application/pdf")}, data={"submitted_by": "me\u0000"}
        )
        json_meta = await http.post(
            "/jobs",
            json={"source": {"bucket": "pagewire", "key": "jobs/x/source.pdf"}, "metadata": {"k": "v\u0001"}},
        )
        listing = await http.get("/jobs", params={"submitted_by": "me\u0000"})

        # Then each is a 422 with a code, and nothing else happened
        for response in (cancel_nul, cancel_bell, dots_upload, nul_by, json_meta, listing):
            assert response.status_code == 422, response.text
            assert response.json()["error_code"] in ("malformed_message", "invalid_options")
        assert dots.status_code == 422, dots.text

        # And a file name with control characters is kept, cleaned, not refused
        named = await http.post(
            "/jobs", files={"file": ("bad\u0007name.pdf", pdf, "application/pdf")}, data={"engine": "text"}
        )
        assert named.status_code == 202, named.text

        # And the job the refusals named is still served and completes
        for _ in range(300):
            status = (await http.get(f"/jobs/{job_id}")).json()["status"]
            if status in ("completed", "failed", "cancelled", "completed_with_errors"):
                break
            await asyncio.sleep(0.1)
        assert status == "completed"


async def test_a_multipart_body_that_does_not_parse_is_malformed(gateway: Gateway) -> None:
    pdf = text_pdf([lines(["one page"])])
    async with gateway.client() as http:
        # When a multipart body has no boundary, or carries more files than the route takes
        no_boundary = {"content-type": "multipart/form-data"}
        garbage = await http.post("/jobs", content=b"garbage", headers=no_boundary)
        garbage_deepseek = await http.post("/jobs/create", content=b"garbage", headers=no_boundary)
        two_files = await http.post(
            "/jobs", files=[("file", ("a.pdf", pdf, "application/pdf")), ("file", ("b.pdf", pdf, "application/pdf"))]
        )
        # and, beside them, a route that is not there and a method a route does not take
        no_route = await http.get("/no-such-route")
        wrong_method = await http.put("/health")

    # Then the body is malformed_message (a 422, as for JSON that does not parse), not "not_found"
    for response in (garbage, garbage_deepseek, two_files):
        assert response.status_code == 422, response.text
        assert response.json()["error_code"] == "malformed_message", response.text
    assert (no_route.status_code, no_route.json()["error_code"]) == (404, "not_found")
    assert (wrong_method.status_code, wrong_method.json()["error_code"]) == (405, "method_not_allowed")
    assert "GET" in wrong_method.headers["allow"], "a 405 names the methods the route takes"
