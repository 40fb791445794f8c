"""``pagewire dead``: what lands in the dead-letter queue can be seen, replayed and purged, and nothing is lost.

Each test has a prefix of its own (``pagewire_env``) on the real broker and
drives the ``dead`` subcommands the way a user does (the argparse entry of
``producer.dead``), checking what is on the queues afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from adapters.amqp import declare_topology, queue_depth
from producer import dead
from producer.api import Client
from schemas.messages import Engine, JobOptions, JobRequest, Source
from schemas.names import Topology
from schemas.settings import ClientSettings, Settings
from tests.integration.stack import Stack
from tools.samples import lines, text_pdf

pytestmark = pytest.mark.integration


async def pagewire_dead(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``pagewire dead ARGV...`` in this process; (exit code, stdout, stderr)."""
    parser = argparse.ArgumentParser(prog="pagewire")
    dead.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["dead", *argv])
    capsys.readouterr()
    code = await args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


async def wait_depth(settings: Settings, queue: str, expected: int, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while (depth := (await queue_depth(settings.amqp_url.get_secret_value(), queue))[0]) != expected:
        assert time.monotonic() < deadline, f"{queue} holds {depth} messages, not {expected}"
        await asyncio.sleep(0.1)


async def drain(channel: AbstractChannel, queue_name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take every message off a queue (acked), oldest first."""
    queue = await channel.get_queue(queue_name)
    taken = []
    while (message := await queue.get(fail=False)) is not None:
        await message.ack()
        taken.append(message)
    return taken


@pytest.fixture
async def channel(pagewire_settings: Settings) -> AsyncIterator[AbstractChannel]:
    """A plain channel on this test's prefix, with the topology declared."""
    connection = await aio_pika.connect(pagewire_settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        await declare_topology(channel, pagewire_settings.topology)
        yield channel


@pytest.fixture
def roles(pagewire_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(pagewire_env, tmp_path / "roles")
    try:
        yield stack
    finally:
        stack.stop_all()


async def test_poison_is_listed_without_loss_then_replayed_to_its_queue(
    pagewire_settings: Settings, channel: AbstractChannel, roles: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = pagewire_settings.topology
    # Given a planner that dead-letters two malformed job requests
    roles.start("planner")
    roles.wait_ready({"planner": topology.jobs_queue})
    named = b'{"type": "JobRequest", "schema_version": 1, "job_id": "dead-1"}'
    jobs = await channel.get_exchange(topology.jobs_exchange)
    await jobs.publish(aio_pika.Message(named, content_type="application/json", message_id="m-named"), "job")
    await jobs.publish(aio_pika.Message(b"\x00 not json"), "job")
    await wait_depth(pagewire_settings, topology.dead_queue, 2)

    # When a user lists them, twice, and once with a limit
    code, out, _ = await pagewire_dead(capsys, "list", "--json")
    assert code == 0
    letters = [json.loads(line) for line in out.splitlines()]
    code, again, _ = await pagewire_dead(capsys, "list", "--json")
    assert [json.loads(line) for line in again.splitlines()] == letters
    code, limited, _ = await pagewire_dead(capsys, "list", "--limit", "1")
    code, text, summary = await pagewire_dead(capsys, "list")

    # Then each shows the reason, the code and the origin queue, and listing removed nothing
    assert {letter["id"] for letter in letters} >= {"m-named"}
    for letter in letters:
        assert letter["reason"] == "pagewire"
        assert letter["error_code"] == "malformed_message"
        assert letter["origin_queue"] == topology.jobs_queue
        assert letter["attempts"] == 1
        assert letter["error"]
    (by_name,) = [letter for letter in letters if letter["id"] == "m-named"]
    assert by_name["job_id"] == "dead-1"
    assert by_name["error"].startswith("source:")
    (unnamed,) = [letter for letter in letters if letter["id"] != "m-named"]
    assert unnamed["job_id"] is None and unnamed["type"] is None
    assert len(limited.strip().splitlines()) == 2  # one message: its line and its error line
    assert "malformed_message" in text and topology.jobs_queue in text
    assert "2 message(s)" in summary
    await wait_depth(pagewire_settings, topology.dead_queue, 2)

    # When the planner is stopped (so nothing takes them again) and the user replays them all
    roles.stop_all()
    code, out, _ = await pagewire_dead(capsys, "replay", "--all")

    # Then both are back on the jobs queue, as they were before they died, and the dead queue is empty
    assert code == 0
    assert sorted(out.split()) == sorted(["replayed", "replayed", *(letter["id"] for letter in letters)])
    await wait_depth(pagewire_settings, topology.dead_queue, 0)
    back = await drain(channel, topology.jobs_queue)
    assert sorted(m.body for m in back) == sorted([named, b"\x00 not json"])
    for message in back:
        headers = message.headers or {}
        assert not [name for name in headers if name.startswith("x-pagewire-") or name == "x-death"], headers
        assert not message.redelivered
    assert [m.message_id for m in back if m.body == named] == ["m-named"]


async def test_broker_dead_letter_is_replayed_and_the_job_then_completes(
    pagewire_settings: Settings,
    pagewire_env: dict[str, str],
    channel: AbstractChannel,
    roles: Stack,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topology = pagewire_settings.topology
    settings = ClientSettings.from_variables(pagewire_env)
    async with Client(settings) as client:
        # Given a good job whose request a crashing planner handed back until the delivery limit
        request = JobRequest(
            source=Source(bucket=settings.s3_bucket, key=f"dead/{topology.prefix}.pdf"),
            options=JobOptions(engine=Engine.TEXT),
        )
        await asyncio.to_thread(
            client.storage.put_bytes,
            settings.s3_bucket,
            request.source.key,
            text_pdf([lines(["back from the dead"])]),
            "application/pdf",
        )
        await client.publish(request)
        await crash_until_dead_lettered(channel, topology)

        # When the user lists it
        code, out, _ = await pagewire_dead(capsys, "list", "--json")
        (letter,) = [json.loads(line) for line in out.splitlines()]

        # Then it shows the broker's reason and the queue it died on
        assert letter["reason"] == "delivery_limit"
        assert letter["origin_queue"] == topology.jobs_queue
        assert letter["error_code"] is None
        assert letter["job_id"] == request.job_id

        # When the planner is fixed and the user replays that message by its id
        roles.start("planner")
        roles.start("worker")
        roles.start("recorder")
        roles.wait_ready(timeout=90)
        async with client.subscribe() as events:
            code, out, _ = await pagewire_dead(capsys, "replay", letter["id"])
            assert code == 0
            seen = [e async for e in events.for_jobs({request.job_id})]
        status = await client.final_status(request.job_id)

    # Then the job completes and the dead queue is empty
    assert seen[-1].type == "JobCompleted"
    assert status["status"] == "completed"
    await wait_depth(pagewire_settings, topology.dead_queue, 0)


async def crash_until_dead_lettered(channel: AbstractChannel, topology: Topology) -> None:
    """Take the one message on the jobs queue and hand it back until the broker dead-letters it."""
    queue = await channel.get_queue(topology.jobs_queue)
    for _ in range(topology.delivery_limit + 10):
        message = await queue.get(fail=False)
        if message is None:
            break
        await message.nack(requeue=True)
    else:
        raise AssertionError("the broker never dead-lettered the message")


async def publish_dead(
    channel: AbstractChannel, topology: Topology, message_id: str, origin: str, **extra: Any
) -> None:
    """A message as a role dead-letters it, straight onto the dead exchange."""
    headers = {
        "x-pagewire-error-code": "retries_exhausted",
        "x-pagewire-error": "gave up after 5 attempts",
        "x-pagewire-queue": origin,
        "x-pagewire-attempts": 5,
        "x-pagewire-type": "PageTask",
        **extra,
    }
    exchange = await channel.get_exchange(topology.dead_exchange)
    body = json.dumps({"message_id": message_id}).encode()
    await exchange.publish(aio_pika.Message(body, message_id=message_id, headers=headers), "")


async def test_replay_and_purge_by_id_leave_the_others(
    pagewire_settings: Settings, channel: AbstractChannel, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = pagewire_settings.topology
    # Given four dead messages: two from the tasks queue, one from the recorder, one from nowhere known
    await publish_dead(channel, topology, "task-a", topology.tasks_queue)
    await publish_dead(channel, topology, "task-b", topology.tasks_queue)
    await publish_dead(channel, topology, "event-c", topology.recorder_queue)
    await publish_dead(channel, topology, "stray-d", "someone.elses.queue")
    await wait_depth(pagewire_settings, topology.dead_queue, 4)

    # When the user replays one task, the event straight to its queue, the stray one, and an unknown id
    code, out, err = await pagewire_dead(capsys, "replay", "task-a", "stray-d", "nope")
    assert code == 1  # stray-d could not be routed: a failure, reported, and kept
    assert out.split() == ["replayed", "task-a"]
    assert "stray-d" in err and "nope" in err
    code, out, _ = await pagewire_dead(capsys, "replay", "--to-queue-of-origin", "event-c")
    assert code == 0

    # Then each went to its own queue only, keeping its own headers, and the rest stayed dead
    (task,) = await drain(channel, topology.tasks_queue)
    assert task.message_id == "task-a"
    # (a quorum queue adds x-delivery-count on delivery: 0 shows the dead queue's count was not carried over)
    assert task.headers == {"x-pagewire-type": "PageTask", "x-delivery-count": 0}
    (event,) = await drain(channel, topology.recorder_queue)
    assert event.message_id == "event-c"
    code, out, _ = await pagewire_dead(capsys, "list", "--json")
    assert sorted(json.loads(line)["id"] for line in out.splitlines()) == ["stray-d", "task-b"]

    # When the user purges one, and asks without naming any
    code, out, _ = await pagewire_dead(capsys, "purge", "stray-d")
    assert (code, out.split()) == (0, ["purged", "stray-d"])
    usage, _, err = await pagewire_dead(capsys, "purge")
    assert usage == 2 and "--all" in err
    missing, _, _ = await pagewire_dead(capsys, "replay", "nope")
    assert missing == 4

    # Then only the other task is left, and purging all empties the queue
    await wait_depth(pagewire_settings, topology.dead_queue, 1)
    code, out, _ = await pagewire_dead(capsys, "purge", "--all")
    assert out.split() == ["purged", "task-b"]
    await wait_depth(pagewire_settings, topology.dead_queue, 0)
