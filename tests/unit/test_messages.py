"""The message contract: parsing, error codes for bad bodies, and the checked-in JSON Schema."""

from __future__ import annotations

import json
from collections.abc import Callable

import jsonschema
import pytest

from schemas.errors import ErrorCode, PermanentError
from schemas.generate import JSON_DIR, render, schemas
from schemas.messages import (
    JobRequest,
    PageCompleted,
    Source,
    completion_event_id,
    job_id_of,
    parse_as,
    parse_event,
    parse_message,
    to_body,
)


def test_checked_in_json_schema_matches_the_models() -> None:
    for name, schema in schemas().items():
        path = JSON_DIR / name
        assert path.exists(), f"{name} missing: run python -m schemas.generate"
        assert path.read_text() == render(schema), f"{name} drifted: run python -m schemas.generate"


def test_a_minimal_request_from_another_language_validates_against_the_schema() -> None:
    body = {"type": "JobRequest", "schema_version": 1, "source": {"bucket": "pagewire", "key": "inbox/a.pdf"}}
    jsonschema.validate(body, json.loads((JSON_DIR / "JobRequest.json").read_text()))
    request = parse_as(JobRequest, json.dumps(body).encode())
    assert request.options.engine == "auto" and request.options.dpi == 150


def test_round_trip_keeps_every_field() -> None:
    request = JobRequest(source=Source(bucket="pagewire", key="a.pdf"), metadata={"team": "x"})
    assert parse_message(to_body(request)) == request


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", ErrorCode.MALFORMED_MESSAGE),
        (b"[1, 2]", ErrorCode.MALFORMED_MESSAGE),
        (b'{"type": "JobRequest", "schema_version": 1}', ErrorCode.MALFORMED_MESSAGE),
        (b'{"type": "Nope", "schema_version": 1}', ErrorCode.MALFORMED_MESSAGE),
        (
            b'{"type": "JobRequest", "schema_version": 2, "source": {"bucket": "abc", "key": "k"}}',
            ErrorCode.UNSUPPORTED_SCHEMA_VERSION,
        ),
        (b'{"type": "JobRequest"}', ErrorCode.UNSUPPORTED_SCHEMA_VERSION),
    ],
)
@pytest.mark.parametrize(
    "parse",
    [parse_message, parse_event, lambda body: parse_as(JobRequest, body)],
    ids=["parse_message", "parse_event", "parse_as"],
)
def test_bad_bodies_get_their_code(body: bytes, code: ErrorCode, parse: Callable[[bytes], object]) -> None:
    with pytest.raises(PermanentError) as caught:
        parse(body)
    assert caught.value.code == code


def test_oversized_message_is_refused_before_parsing() -> None:
    with pytest.raises(PermanentError) as caught:
        parse_message(b"{" + b" " * 2000 + b"}", max_bytes=1024)
    assert caught.value.code == ErrorCode.MESSAGE_TOO_LARGE


def test_unknown_fields_are_refused() -> None:
    body = b'{"type": "JobRequest", "schema_version": 1, "source": {"bucket": "abc", "key": "k"}, "colour": 1}'
    with pytest.raises(PermanentError, match="colour"):
        parse_message(body)


def test_page_range_must_be_ordered() -> None:
    body = (
        b'{"type":"JobRequest","schema_version":1,"source":{"bucket":"abc","key":"k"},'
        b'"options":{"first_page":3,"last_page":2}}'
    )
    with pytest.raises(PermanentError):
        parse_message(body)


def test_events_parse_by_type() -> None:
    event = PageCompleted(job_id="j", page_no=1, text="hi", confidence=1, engine="text", duration_ms=1, worker="w")
    assert parse_event(to_body(event)) == event


def test_job_id_is_recovered_from_a_broken_body_when_it_is_safe() -> None:
    assert job_id_of(b'{"job_id": "abc-1", "oops": true}') == "abc-1"
    assert job_id_of(b'{"job_id": "../etc"}') is None
    assert job_id_of(b"garbage") is None


def test_completion_event_id_is_stable() -> None:
    assert completion_event_id("j1", "completed") == completion_event_id("j1", "completed")
    assert completion_event_id("j1", "completed") != completion_event_id("j2", "completed")
