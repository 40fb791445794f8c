"""Every date-time a message carries has a UTC offset, as RFC 3339 (the schema's ``date-time``) says.

pydantic alone takes ``"2030-01-01T00:00:00"`` as a naive datetime. One such ``occurred_at`` in the
recorder's batch, beside events with an offset, raised ``TypeError: can't compare offset-naive and
offset-aware datetimes`` where the recorder sorts a batch's job events by time: the recorder process
died, and the batch, innocent events with it, came back to the next recorder to do the same
(found by ``tests/integration/test_hostile_messages.py``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from schemas.errors import ErrorCode, PermanentError
from schemas.messages import (
    ALL_MESSAGE_TYPES,
    JobCancelled,
    JobOptions,
    JobRequest,
    JobStarted,
    PageTask,
    Source,
    parse_as,
    parse_event,
    parse_job_request,
    to_body,
)

SOURCE = Source(bucket="pagewire", key="jobs/j-1/source.pdf")
WHEN = datetime(2030, 1, 1, tzinfo=UTC)
SAMPLES: list[BaseModel] = [
    JobRequest(job_id="j-1", source=SOURCE, deadline=WHEN),
    PageTask(job_id="j-1", source=SOURCE, first_page=1, last_page=1, options=JobOptions(), deadline=WHEN),
    JobStarted(
        job_id="j-1",
        source=SOURCE,
        options=JobOptions(),
        total_pages=1,
        first_page=1,
        last_page=1,
        tasks=1,
        deadline=WHEN,
    ),
    JobCancelled(job_id="j-1", reason="stop"),
]
FIELDS = [
    (message, name)
    for message in SAMPLES
    for name in ("occurred_at", "submitted_at", "deadline")
    if name in type(message).model_fields
]


def parse(message: BaseModel, body: bytes) -> BaseModel:
    if isinstance(message, JobRequest):
        return parse_job_request(body, None)
    if isinstance(message, PageTask):
        return parse_as(PageTask, body)
    return parse_event(body)


def with_value(message: BaseModel, name: str, value: str) -> bytes:
    return json.dumps({**json.loads(to_body(message)), name: value}).encode()


def test_every_datetime_field_is_covered() -> None:
    covered = {(type(m), name) for m, name in FIELDS}
    for model in ALL_MESSAGE_TYPES:
        for name, field in model.model_fields.items():
            if "datetime" in str(field.annotation):
                assert (model, name) in covered or name == "occurred_at", (model.__name__, name)


@pytest.mark.parametrize(("message", "name"), FIELDS, ids=lambda x: x if isinstance(x, str) else type(x).__name__)
@pytest.mark.parametrize("value", ["2030-01-01T00:00:00", "2030-01-01T00:00:00.5", "0001-01-01T00:00:00"])
def test_a_date_time_without_an_offset_is_malformed(message: BaseModel, name: str, value: str) -> None:
    with pytest.raises(PermanentError) as caught:
        parse(message, with_value(message, name, value))
    assert caught.value.code == ErrorCode.MALFORMED_MESSAGE
    assert name in caught.value.message and "UTC offset" in caught.value.message


@pytest.mark.parametrize(("message", "name"), FIELDS, ids=lambda x: x if isinstance(x, str) else type(x).__name__)
@pytest.mark.parametrize("value", ["2030-01-01T00:00:00Z", "2030-01-01T00:00:00+14:00", "2030-01-01T00:00:00-09:30"])
def test_a_date_time_with_an_offset_is_the_same_instant(message: BaseModel, name: str, value: str) -> None:
    parsed = parse(message, with_value(message, name, value))
    assert getattr(parsed, name) == datetime.fromisoformat(value)


def test_messages_built_in_python_with_a_naive_datetime_are_refused_too() -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        JobCancelled(job_id="j-1", occurred_at=datetime(2030, 1, 1))
