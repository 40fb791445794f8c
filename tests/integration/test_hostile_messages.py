"""Hostile strings in every field of every message type, through the real stack (issue 19, item 7).

Each message type (``JobRequest`` to the jobs exchange, ``PageTask`` to the tasks
exchange, every event to the events exchange) is built valid, then one string
field at a time is replaced *in the JSON text* by something hostile: NUL and
other control characters (escaped, and raw inside the string), lone surrogates
written as ``\\udXXX`` escapes, very long strings, dots-only ids, bytes that are
not UTF-8; date-times without an offset or out of Python's range once in UTC;
and some bodies that are not JSON at all. They are published raw, as
a producer in another language could, past any client-side validation.

The hostile values are drawn by hypothesis once per run (derandomized, so a
failure reproduces), and all of them go to one stack in one go: a stack per
example would cost ~10 s each. Then, what a user relies on:

- every role process is still up and still consuming its queue;
- another job's events, published in the same burst as the hostile ones (so
  in the recorder's batches with them), still complete that job;
- a normal job submitted afterwards completes;
- nothing but the hostile bodies was dead-lettered.

It found one bug: a date-time without an offset (``"2030-01-01T00:00:00"``) passed the
contract as a naive datetime, and the recorder, sorting a batch's job events by
``occurred_at``, died comparing it with an aware one (``tests/unit/test_message_datetimes.py``).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from adapters.amqp import queue_depth
from producer.api import Client
from schemas.errors import ErrorCode
from schemas.messages import (
    Block,
    Engine,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobOptions,
    JobQueued,
    JobRequest,
    JobStarted,
    NumberDisagreement,
    PageCompleted,
    PageFailed,
    PageTask,
    Source,
    to_body,
)
from schemas.names import HEADER_ERROR_CODE, JOB_ROUTING_KEY, TASK_ROUTING_KEY
from tests.integration.stack import MakeStack, Stack, run_job
from tests.integration.test_dead_letters import drain
from tests.integration.test_recorder_apply import job_events
from tools import devstack
from tools.samples import lines, text_pdf

pytestmark = pytest.mark.integration

PLACEHOLDER = "__HOSTILE_FIELD__"
LONG = 200_000
"""Characters in a very long string: over every field's limit but page text's, a 200 KB body."""

Path = tuple[Any, ...]
"""Where a string sits in a message's dict: keys and list indexes; ``("key", ...)`` ends at a dict key."""


# --- the hostile values ---------------------------------------------------------


def _json_str(text: str) -> bytes:
    """``text`` as a JSON string literal, controls and lone surrogates as ``\\uXXXX`` escapes."""
    return json.dumps(text).encode()


FIXED: list[bytes] = [
    _json_str("nul\x00inside"),
    _json_str("\x01\x07\x08\x1b[31mred\x7f\x85\x9f"),
    _json_str("tab\there\nline\rcr"),  # allowed in free text, refused in names
    b'"lone \\ud800 high"',
    b'"\\udfff"',
    b'"\\ude00\\ud83d reversed pair"',
    _json_str("x" * LONG),
    _json_str("é" * 700),  # under 1,024 characters, over 1,024 bytes
    b'"."',
    b'".."',
    b'"....."',
    b'"not \xff\xfe utf-8 \xc0\x80 \xed\xa0\x80"',  # invalid bytes, an overlong NUL, an encoded surrogate
    b'"raw \x00 \x1f control"',  # a control unescaped inside a JSON string: not JSON
    b'""',
]
"""Hostile JSON string literals, written as bytes so some are not valid JSON or UTF-8 at all."""

DATETIME_FIELDS = {"occurred_at", "submitted_at", "deadline"}
DATETIMES: list[bytes] = [
    b'"0001-01-01T00:00:00+14:00"',  # valid, but before year 1 in UTC: Python cannot convert it
    b'"9999-12-31T23:59:59-14:00"',  # after year 9999 in UTC
    b'"2030-01-01T00:00:00"',  # no offset: a naive datetime, which an aware one cannot be compared with
    b'"0001-01-01T00:00:00"',
    b'"-1"',
    b'"2026-02-30T00:00:00Z"',
]
"""Strings in datetime fields: some pass the contract and still are no instant Python can place in UTC."""

_controls = st.characters(codec=None, categories=["Cc"])
_surrogates = st.characters(categories=["Cs"])
_hostile_text = st.one_of(
    st.text(alphabet=_controls, min_size=1, max_size=16),
    st.text(alphabet=_surrogates, min_size=1, max_size=4),
    st.tuples(st.text(max_size=12), st.one_of(_controls, _surrogates), st.text(max_size=12)).map("".join),
    st.integers(min_value=1, max_value=8).map(lambda n: "." * n),
)


def hypothesis_draws(count: int) -> list[bytes]:
    """``count`` hostile strings drawn by hypothesis, as JSON literals; the same ones every run."""
    drawn: list[bytes] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(_hostile_text)
    def collect(text: str) -> None:
        if len(drawn) < count:
            drawn.append(_json_str(text))

    collect()
    return drawn


NOT_JSON: list[bytes] = [
    b"",
    b"\x00",
    b"\xff\xfe\x00{",
    b"not json at all",
    b"null",
    b"[]",
    b'"a string"',
    b"{" * 5000,  # deep nesting
    b"[" * 100_000,
    b'{"type": "PageCompleted", "schema_version": 1',  # cut off
    b'{"type": "JobQueued", "schema_version": 1, "job_id": "a\\u0000b"}',
    b'{"type": "\\ud800", "schema_version": 1}',
]
"""Whole bodies that are no message at all, sent to every exchange."""


# --- valid messages, each string field replaced in turn --------------------------


def base_messages(job_id: str, bucket: str) -> list[BaseModel]:
    """One valid message of each type for ``job_id``, every optional string field filled in."""
    source = Source(bucket=bucket, key=f"jobs/{job_id}/source.pdf", etag="etag-1")
    options = JobOptions(engine=Engine.TEXT)
    deadline = datetime(2099, 1, 1, tzinfo=UTC)
    return [
        JobRequest(
            job_id=job_id,
            source=source,
            options=options,
            idempotency_key="idem-1",
            deadline=deadline,
            submitted_by="someone",
            metadata={"label": "value"},
        ),
        PageTask(job_id=job_id, source=source, first_page=1, last_page=1, options=options, deadline=deadline),
        JobQueued(job_id=job_id, source=source, options=options, submitted_by="someone", metadata={"label": "v"}),
        JobStarted(
            job_id=job_id,
            source=source,
            options=options,
            total_pages=1,
            first_page=1,
            last_page=1,
            tasks=1,
            idempotency_key="idem-1",
            deadline=deadline,
        ),
        PageCompleted(
            job_id=job_id,
            page_no=1,
            text="page text",
            blocks=[Block(text="block", bbox=(0.1, 0.1, 0.5, 0.2), confidence=0.9)],
            number_disagreements=[NumberDisagreement(kind="number", text_layer="12", ocr="13")],
            confidence=0.9,
            engine=Engine.TEXT,
            duration_ms=1,
            worker="w",
        ),
        PageFailed(
            job_id=job_id,
            page_no=1,
            error_code=ErrorCode.OCR_FAILED,
            message="it broke",
            attempt=1,
            final=True,
            worker="w",
        ),
        JobCompleted(
            job_id=job_id, pages_ok=1, pages_failed=0, result_keys={"md": f"jobs/{job_id}/result.md"}, bucket=bucket
        ),
        JobFailed(job_id=job_id, error_code=ErrorCode.OCR_FAILED, message="it broke"),
        JobCancelled(job_id=job_id, reason="stop"),
    ]


def string_paths(value: Any, path: Path = ()) -> Iterator[Path]:
    """Every string in a JSON value (dict keys too, as ``(*path, ("key", k))``)."""
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield (*path, ("key", key))
            yield from string_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from string_paths(item, (*path, index))


def with_placeholder(data: Any, path: Path) -> Any:
    """A copy of ``data`` with the string at ``path`` (or the dict key it ends at) set to :data:`PLACEHOLDER`."""
    head, *rest = path
    if isinstance(head, tuple):  # ("key", k): rename the key, keep its value
        return {(PLACEHOLDER if k == head[1] else k): v for k, v in data.items()}
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[head] = PLACEHOLDER if not rest else with_placeholder(data[head], tuple(rest))
    return copy


def hostile_bodies(bucket: str, literals: list[bytes]) -> list[tuple[str, bytes]]:
    """(exchange kind, body) for every string field of every message type, each given a hostile literal.

    Each message names a job of its own (unless its job id is what is hostile), so a failed
    job can be told from another; the literals are dealt round so each type sees most of them.
    """
    bodies: list[tuple[str, bytes]] = []
    turn = 0

    def one(n: int, path: Path, literal: bytes) -> tuple[str, bytes]:
        message = base_messages(f"hostile-{secrets.token_hex(6)}", bucket)[n]  # a job and event id of its own
        kind = {"JobRequest": "jobs", "PageTask": "tasks"}.get(type(message).__name__, "events")
        text = json.dumps(with_placeholder(json.loads(to_body(message)), path)).encode()
        assert text.count(f'"{PLACEHOLDER}"'.encode()) == 1, path
        return kind, text.replace(f'"{PLACEHOLDER}"'.encode(), literal)

    for n, model in enumerate(base_messages("probe", bucket)):
        for path in string_paths(json.loads(to_body(model))):
            for _ in range(2):  # two hostile values per field
                bodies.append(one(n, path, literals[turn % len(literals)]))
                turn += 1
            if path[-1] in DATETIME_FIELDS:
                bodies.extend(one(n, path, literal) for literal in DATETIMES)
    for body in NOT_JSON:
        bodies.extend((kind, body) for kind in ("jobs", "tasks", "events"))
    return bodies


# --- the stack --------------------------------------------------------------------


@pytest.fixture
async def channel(services: Any) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(services.amqp_url)
    async with connection:
        yield await connection.channel(publisher_confirms=True)


async def publish(channel: AbstractChannel, stack: Stack, bodies: list[tuple[str, bytes]]) -> None:
    """Publish raw bodies onto the exchanges, as any producer could."""
    topology = stack.topology
    exchanges = {
        "jobs": (await channel.get_exchange(topology.jobs_exchange), JOB_ROUTING_KEY),
        "tasks": (await channel.get_exchange(topology.tasks_exchange), TASK_ROUTING_KEY),
        "events": (await channel.get_exchange(topology.events_exchange), ""),
    }
    for kind, body in bodies:
        exchange, routing_key = exchanges[kind]
        await exchange.publish(aio_pika.Message(body, content_type="application/json"), routing_key)


async def wait_until_quiet(stack: Stack, within_s: float = 60.0) -> None:
    """Until the role queues hold nothing ready and the dead-letter queue has stopped growing for 2 s."""
    url = stack.env["PAGEWIRE_AMQP_URL"]
    topology = stack.topology
    work = [
        topology.jobs_queue,
        topology.tasks_queue,
        topology.tasks_high_queue,
        topology.recorder_queue,
        topology.recorder_dead_queue,
    ]
    deadline = time.monotonic() + within_s
    last, steady_since = -1, time.monotonic()
    while True:
        assert_roles_up(stack)
        ready = [(await queue_depth(url, q))[0] for q in work]
        dead = (await queue_depth(url, topology.dead_queue))[0]
        if dead != last or any(ready):
            last, steady_since = dead, time.monotonic()
        elif time.monotonic() - steady_since > 2.0:
            return
        assert time.monotonic() < deadline, f"not quiet within {within_s} s: ready {ready}, dead {dead}"
        await asyncio.sleep(0.3)


def assert_roles_up(stack: Stack) -> None:
    for name, proc in stack.processes.items():
        assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{stack.log(name)[-3000:]}"


async def assert_consuming(stack: Stack) -> None:
    url = stack.env["PAGEWIRE_AMQP_URL"]
    queues = [*devstack.role_queues(stack.topology).items(), ("recorder", stack.topology.recorder_dead_queue)]
    for role, queue in queues:
        _, consumers = await queue_depth(url, queue)
        assert consumers >= 1, f"{role} no longer consumes {queue}:\n{stack.log(role)[-3000:]}"


async def test_hostile_strings_in_every_field_leave_every_role_up_and_only_themselves_dead_lettered(
    make_stack: MakeStack, channel: AbstractChannel
) -> None:
    # Given the three roles, the recorder gathering what comes within half a second into one batch
    stack = make_stack(PAGEWIRE_BATCH_WAIT_MS="500", PAGEWIRE_BATCH_MAX_WAIT_MS="3000")
    bucket = stack.settings.s3_bucket
    hostile = hostile_bodies(bucket, FIXED + hypothesis_draws(24))
    sent = {body for _, body in hostile}
    # ... and the events of another job, innocent, to go in the same burst
    innocent = f"innocent-{secrets.token_hex(4)}"
    queued, started, pages = job_events(innocent, 3)
    innocent_bodies = [to_body(e) for e in (queued, started, *pages)]
    assert not sent & set(innocent_bodies)
    burst: list[tuple[str, bytes]] = list(hostile)
    step = len(burst) // (len(innocent_bodies) + 1)
    for i, body in enumerate(innocent_bodies):
        burst.insert((i + 1) * step + i, ("events", body))  # in order, spread among the hostile ones

    # When every hostile body and the innocent events are published in one go
    await publish(channel, stack, burst)
    await wait_until_quiet(stack)

    # Then every role is still up and consuming
    assert_roles_up(stack)
    await assert_consuming(stack)
    async with Client(stack.settings) as client:
        # And the innocent job, whose events shared batches with the hostile ones, completed
        row = await client.final_status(innocent, wait_s=60)
    assert (row["status"], row["pages_ok"]) == ("completed", 3), row

    # And a normal job submitted afterwards completes
    run = await run_job(stack, text_pdf([lines(["after the storm"])]), options=JobOptions(engine=Engine.TEXT))
    assert run.status["status"] == "completed", run.status

    # And nothing but hostile bodies was dead-lettered (some surely were: a body that is not JSON)
    await wait_until_quiet(stack)
    dead = await drain(channel, stack.topology.dead_queue)
    innocent_dead = [m.body[:300] for m in dead if m.body not in sent]
    assert not innocent_dead, f"{len(innocent_dead)} innocent message(s) dead-lettered: {innocent_dead}"
    assert b"not json at all" in {m.body for m in dead}
    assert_roles_up(stack)
    await assert_consuming(stack)


def one_hostile_event(model: BaseModel, field: str, literal: bytes) -> bytes:
    """``model``'s body with ``field`` set to the JSON literal ``literal``."""
    text = json.dumps({**json.loads(to_body(model)), field: PLACEHOLDER}).encode()
    return text.replace(f'"{PLACEHOLDER}"'.encode(), literal)


async def test_a_hostile_event_in_a_batch_of_innocent_events_costs_only_itself(
    make_stack: MakeStack, channel: AbstractChannel
) -> None:
    # Given the three roles, the recorder gathering what comes within a second into one batch
    stack = make_stack(PAGEWIRE_BATCH_WAIT_MS="1000", PAGEWIRE_BATCH_MAX_WAIT_MS="5000")
    bucket = stack.settings.s3_bucket

    def hostile_of(_: int) -> list[BaseModel]:  # a fresh hostile job for each
        return base_messages(f"hostile-{secrets.token_hex(6)}", bucket)[2:]  # the events only

    # ... and hostile events of every kind: refused by the contract, or passed by it and refused by PostgreSQL
    queued_, started_, completed_, failed_, _, job_failed_, cancelled_ = range(7)
    hostile = [
        b"\xff\xfe\x00{",
        one_hostile_event(hostile_of(0)[cancelled_], "reason", _json_str("stop\x00now")),
        one_hostile_event(hostile_of(1)[completed_], "text", b'"lone \\ud800 high"'),
        one_hostile_event(hostile_of(2)[job_failed_], "message", _json_str("x" * LONG)),
        one_hostile_event(hostile_of(3)[queued_], "job_id", b'".."'),
        one_hostile_event(hostile_of(4)[failed_], "worker", b'"not \xff utf-8"'),
        one_hostile_event(hostile_of(5)[started_], "occurred_at", b'"2030-01-01T00:00:00"'),  # no offset
        one_hostile_event(hostile_of(6)[queued_], "occurred_at", b'"0001-01-01T00:00:00+14:00"'),  # PG refuses
    ]
    # ... each in the middle of the events of an innocent job of its own
    burst: list[bytes] = []
    innocents = [f"innocent-{n}-{secrets.token_hex(4)}" for n in range(len(hostile))]
    for job_id, bad in zip(innocents, hostile, strict=True):
        queued, started, pages = job_events(job_id, 2)
        burst += [to_body(queued), to_body(started), bad, *[to_body(p) for p in pages]]

    # When they are all published in one go (one batch of the recorder's)
    await publish(channel, stack, [("events", body) for body in burst])
    await wait_until_quiet(stack)

    # Then every innocent job completed, every role is up and consuming
    async with Client(stack.settings) as client:
        rows = {job_id: await client.final_status(job_id, wait_s=60) for job_id in innocents}
    assert {j: (r["status"], r["pages_ok"]) for j, r in rows.items()} == {j: ("completed", 2) for j in innocents}
    assert_roles_up(stack)
    await assert_consuming(stack)
    # And the batch PostgreSQL refused was split, so the innocent events in it were recorded
    refused = re.search(r"a batch of (\d+) events was refused", stack.log("recorder"))
    assert refused is not None and int(refused.group(1)) > 1, stack.log("recorder")[-3000:]
    # And exactly the hostile events were dead-lettered
    dead = await drain(channel, stack.topology.dead_queue)
    assert sorted(m.body for m in dead) == sorted(hostile)
    codes = {m.body: (m.headers or {}).get(HEADER_ERROR_CODE) for m in dead}
    assert codes[hostile[-1]] == ErrorCode.EVENT_UNRECORDABLE
    assert set(codes.values()) == {ErrorCode.MALFORMED_MESSAGE, ErrorCode.EVENT_UNRECORDABLE}
