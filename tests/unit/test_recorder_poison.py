"""Finding the events a batch cannot take, and ending what the broker gave up on: the pure parts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError

from consumer.recorder.given_up import DEAD_LETTER_WORKER, ending_events, failure_of
from consumer.recorder.poison import describe, is_data_error, isolate, unrecordable_failure
from schemas.errors import ErrorCode
from schemas.messages import JobCancelled, JobOptions, JobRequest, PageFailed, PageTask, Source, to_body
from schemas.names import HEADER_DEATH, HEADER_ERROR, HEADER_ERROR_CODE, HEADER_TYPE


class DriverError(Exception):
    """What SQLAlchemy's asyncpg adapter raises: a message and a SQLSTATE."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def db_error(sqlstate: str, message: str = "refused") -> DBAPIError:
    return DBAPIError("INSERT INTO jobs ...", {"reason": "stop\x00now"}, DriverError(message, sqlstate))


NUL = db_error("22021", 'invalid byte sequence for encoding "UTF8": 0x00')


class FakeApplier:
    """Commits a part unless it holds a bad item; records every transaction tried."""

    def __init__(self, bad: set[int], error: Exception = NUL) -> None:
        self.bad = bad
        self.error = error
        self.transactions: list[list[int]] = []
        self.committed: list[int] = []

    async def __call__(self, part: Sequence[int]) -> list[int]:
        self.transactions.append(list(part))
        if self.bad & set(part):
            raise self.error
        self.committed.extend(part)
        return list(part)


@pytest.mark.parametrize("bad", [set(), {0}, {499}, {7, 300}, {0, 1, 2}, set(range(10))])
async def test_only_the_bad_items_are_set_aside_and_every_other_commits(bad: set[int]) -> None:
    # Given 500 events of which some cannot be stored
    items = list(range(500))
    applier = FakeApplier(bad)

    # When the batch is committed with isolation
    done, refused = await isolate(items, applier, is_data_error)

    # Then exactly the bad ones are refused, each with its error, and every other one is committed once
    assert sorted(item for item, _ in refused) == sorted(bad)
    assert all(error is NUL for _, error in refused)
    assert sorted(applier.committed) == sorted(set(items) - bad)
    assert sorted(i for part in done for i in part) == sorted(set(items) - bad)


async def test_one_bad_item_costs_a_few_transactions_not_one_an_item() -> None:
    applier = FakeApplier({123})

    await isolate(list(range(512)), applier, is_data_error)

    assert len(applier.transactions) <= 2 * 9 + 1  # about 2 log2(n)


async def test_the_batch_error_already_seen_is_not_tried_again() -> None:
    applier = FakeApplier({3})

    await isolate(list(range(8)), applier, is_data_error, NUL)

    assert list(range(8)) not in applier.transactions


async def test_an_error_that_is_not_about_the_data_is_raised_not_split() -> None:
    # Given a database that refuses everything for a reason of its own (a table missing)
    missing = db_error("42P01", 'relation "pages" does not exist')
    applier = FakeApplier(set(range(10)), missing)

    # Then nothing is set aside: the error ends the attempt, as before
    with pytest.raises(DBAPIError):
        await isolate(list(range(10)), applier, is_data_error)
    assert len(applier.transactions) == 1


@pytest.mark.parametrize(
    ("sqlstate", "data"),
    [
        *[("22021", True), ("22000", True), ("22003", True), ("23505", True), ("21000", True), ("54000", True)],
        *[("42P01", False), ("08006", False), ("40P01", False), ("53100", False), ("57P01", False), ("XX000", False)],
    ],
)
def test_data_errors_are_told_from_the_servers_own(sqlstate: str, data: bool) -> None:
    assert is_data_error(db_error(sqlstate)) is data


def test_errors_without_a_sqlstate_are_not_data_errors() -> None:
    assert not is_data_error(ValueError("refused"))
    invalidated = db_error("22021")
    invalidated.connection_invalidated = True
    assert not is_data_error(invalidated)


def test_what_is_stored_about_a_refused_event_is_storable() -> None:
    event = JobCancelled.model_construct(job_id="job-1", reason="x")
    failure = unrecordable_failure(event, RuntimeError("stop\x00now \ud800 and\x07 more" + "x" * 1000))
    assert failure is not None  # built, so every field passed the contract
    text = failure.message
    assert "\x00" not in text and "\x07" not in text
    text.encode("utf-8")  # no surrogate left
    assert len(text) <= 500
    # The database's complaint, not the statement and its values (which hold the bad data)
    assert describe(NUL) == 'invalid byte sequence for encoding "UTF8": 0x00'


def test_the_job_of_a_refused_event_fails_with_a_derived_id_once() -> None:
    # Built past validation, as a body written by hand arrives: the contract itself refuses a NUL
    event = JobCancelled.model_construct(job_id="job-1", reason="stop\x00now")
    failure = unrecordable_failure(event, NUL)
    assert failure is not None
    assert (failure.job_id, failure.error_code) == ("job-1", ErrorCode.EVENT_UNRECORDABLE)
    assert "\x00" not in failure.message and event.event_id in failure.message
    # The same failure again has the same id (it dedupes), and is never sent for itself
    again = unrecordable_failure(event, NUL)
    assert again is not None and again.event_id == failure.event_id
    assert unrecordable_failure(failure, NUL) is None


def test_an_event_naming_no_possible_job_fails_none() -> None:
    assert unrecordable_failure(JobCancelled.model_construct(job_id="job\x00x"), NUL) is None
    assert unrecordable_failure(JobCancelled.model_construct(job_id="j" * 65), NUL) is None


def task(first: int = 3, last: int = 5) -> PageTask:
    return PageTask(
        job_id="job-2",
        source=Source(bucket="pagewire", key="k.pdf"),
        first_page=first,
        last_page=last,
        options=JobOptions(),
    )


def test_a_task_the_broker_gave_up_on_ends_its_pages_as_process_crashed() -> None:
    # Given a PageTask dead-lettered by the broker after the delivery limit (no pagewire code)
    headers: dict[str, Any] = {HEADER_TYPE: "PageTask", HEADER_DEATH: [{"reason": "delivery_limit", "count": 1}]}
    body = to_body(task())

    events = ending_events(body, headers, 1 << 20)

    assert [e.page_no for e in events if isinstance(e, PageFailed)] == [3, 4, 5]
    assert all(isinstance(e, PageFailed) and e.final and e.error_code == ErrorCode.PROCESS_CRASHED for e in events)
    assert all(isinstance(e, PageFailed) and e.worker == DEAD_LETTER_WORKER for e in events)
    # Handled twice (a redelivered notification), the same event ids: they count once
    assert [e.event_id for e in ending_events(body, headers, 1 << 20)] == [e.event_id for e in events]


def test_a_task_a_role_dead_lettered_ends_its_pages_with_the_roles_code() -> None:
    headers = {HEADER_TYPE: "PageTask", HEADER_ERROR_CODE: "storage_unavailable", HEADER_ERROR: "gave up"}

    events = ending_events(to_body(task(1, 1)), headers, 1 << 20)

    assert [(e.error_code, e.message) for e in events if isinstance(e, PageFailed)] == [
        (ErrorCode.STORAGE_UNAVAILABLE, "gave up")
    ]


def test_a_task_without_pagewire_headers_is_known_by_its_body() -> None:
    events = ending_events(to_body(task(2, 2)), {HEADER_DEATH: [{"reason": b"delivery_limit"}]}, 1 << 20)
    assert [e.type for e in events] == ["PageFailed"]


def test_a_request_the_broker_gave_up_on_is_left_for_a_replay() -> None:
    request = JobRequest(job_id="job-3", source=Source(bucket="pagewire", key="k.pdf"))
    headers = {HEADER_TYPE: "JobRequest", HEADER_DEATH: [{"reason": "delivery_limit"}]}

    assert ending_events(to_body(request), headers, 1 << 20) == []


def test_other_dead_letters_end_nothing() -> None:
    event = JobCancelled(job_id="job-4", reason="x")
    assert (
        ending_events(to_body(event), {HEADER_TYPE: "JobCancelled", HEADER_ERROR_CODE: "event_unrecordable"}, 1 << 20)
        == []
    )
    assert ending_events(b"{not json", {HEADER_TYPE: "PageTask"}, 1 << 20) == []


def test_an_unknown_code_in_the_headers_still_ends_the_pages() -> None:
    assert failure_of({HEADER_ERROR_CODE: "no_such_code"})[0] == ErrorCode.RETRIES_EXHAUSTED
    assert failure_of({})[0] == ErrorCode.RETRIES_EXHAUSTED


def test_a_task_naming_more_pages_than_any_planner_makes_ends_nothing() -> None:
    huge = task(1, 1).model_copy(update={"last_page": 2**31})
    headers = {HEADER_TYPE: "PageTask", HEADER_DEATH: [{"reason": "delivery_limit"}]}
    assert ending_events(to_body(huge), headers, 1 << 20) == []
