"""The dead-letter queue: list what is in it, replay it to where it came from, purge it.

Messages reach ``{prefix}.dead`` two ways:

- a role gave up on them (:meth:`adapters.amqp.Publisher.dead_letter`): poison
  bodies (malformed, unknown schema version, too large) and messages whose
  retries ran out. These carry ``x-pagewire-error-code``, ``x-pagewire-error``,
  ``x-pagewire-queue`` (the origin) and ``x-pagewire-attempts``;
- the broker dead-lettered them (a work queue's ``x-delivery-limit`` was
  reached, say because a consumer crashed on the message every time). These
  carry the broker's ``x-death`` header: the origin queue and the reason
  (``delivery_limit``, ``rejected``...), no pagewire code.

How it reads the queue without losing anything: with ``basic.get`` and no
acknowledgement, so every message it looked at stays on the broker, unacked,
until the command settles it: acked once it has been replayed (after the
publisher confirm) or purged, handed back with ``basic.nack(requeue=True)``
otherwise. Should the command die halfway, the broker hands back whatever the
closed channel held. A quorum queue counts each hand-back as a delivery
attempt, but only a queue with a delivery limit acts on that count, and the
dead queue has none (:meth:`schemas.names.Topology.dead_queue_arguments`).
While a command runs, the messages it holds are invisible to another reader.
A command reads at most as many messages as the queue held when it started,
so a replayed message that fails again and comes straight back is not read
twice in one run (no loop).

Replay republishes the body and properties, with the dead-letter headers
stripped (``x-death``, ``x-delivery-count`` and the ``x-pagewire-*`` headers
the dead-lettering added; the message's own ``x-pagewire-type`` and
``x-pagewire-job-id`` stay), with publisher confirms on a mandatory publish,
and acks the dead copy only once the broker confirmed the new one: a crash in
between leaves a duplicate, never a loss (every pagewire consumer is
idempotent). By default it goes through the origin queue's exchange, as the
original did: jobs queue to the jobs exchange (``job``), tasks queue to the
tasks exchange (``task``), recorder queue to the events fanout, which
re-broadcasts the event to every subscriber. ``--to-queue-of-origin`` sends it
through the default exchange straight into the origin queue and no other, and
can also reach a queue that is not part of the topology.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractIncomingMessage
from aio_pika.exceptions import AMQPError

from adapters.amqp import Exchanges, declare_topology
from producer.output import EXIT_JOB_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from schemas.messages import job_id_of
from schemas.names import (
    HEADER_ATTEMPTS,
    HEADER_DEATH,
    HEADER_DELIVERY_COUNT,
    HEADER_ERROR,
    HEADER_ERROR_CODE,
    HEADER_JOB_ID,
    HEADER_QUEUE,
    HEADER_TYPE,
    HIGH_TASK_ROUTING_KEY,
    JOB_ROUTING_KEY,
    TASK_ROUTING_KEY,
)
from schemas.settings import ClientSettings, Settings

# What dead-lettering added, by pagewire or the broker; replay removes these.
DEAD_LETTER_HEADERS = frozenset(
    {
        HEADER_ERROR_CODE,
        HEADER_ERROR,
        HEADER_QUEUE,
        HEADER_ATTEMPTS,
        HEADER_DEATH,
        HEADER_DELIVERY_COUNT,
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)


def _text(value: Any) -> str | None:
    """A header value as text (AMQP tables may hold bytes)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _deaths(headers: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    deaths = headers.get(HEADER_DEATH)
    if not isinstance(deaths, list):
        return []
    return [d for d in deaths if isinstance(d, Mapping)]


def dead_letter_id(message: AbstractIncomingMessage) -> str:
    """The id a user names a dead message by: its ``message_id``, or a digest of the body when it has none."""
    if message.message_id:
        return message.message_id
    return "sha256:" + hashlib.sha256(message.body).hexdigest()[:16]


@dataclass(frozen=True)
class DeadLetter:
    """What the dead queue holds about one message."""

    id: str
    type: str | None
    job_id: str | None
    origin_queue: str | None
    reason: str
    """``pagewire`` when a role dead-lettered it (see ``error_code``), else the broker's reason."""
    error_code: str | None
    error: str | None
    attempts: int | None
    dead_lettered_at: datetime | None
    body_bytes: int
    headers: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> DeadLetter:
        headers = dict(message.headers or {})
        deaths = _deaths(headers)
        latest = deaths[0] if deaths else {}  # the broker puts the latest death first
        code = _text(headers.get(HEADER_ERROR_CODE))
        attempts = headers.get(HEADER_ATTEMPTS)
        when = message.timestamp if code else latest.get("time", message.timestamp)
        return cls(
            id=dead_letter_id(message),
            type=message.type or _text(headers.get(HEADER_TYPE)),
            job_id=_text(headers.get(HEADER_JOB_ID)) or job_id_of(message.body),
            origin_queue=_text(headers.get(HEADER_QUEUE)) or _text(latest.get("queue")),
            reason="pagewire" if code else _text(latest.get("reason")) or "unknown",
            error_code=code,
            error=_text(headers.get(HEADER_ERROR)),
            attempts=int(attempts) if isinstance(attempts, int) else None,
            dead_lettered_at=when if isinstance(when, datetime) else None,
            body_bytes=len(message.body),
            headers=headers,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (headers left out: they may hold bytes)."""
        data = asdict(self)
        del data["headers"]
        data["dead_lettered_at"] = self.dead_lettered_at.isoformat() if self.dead_lettered_at else None
        return data


@dataclass
class Outcome:
    """What a replay or purge did: ids settled, ids that failed (with why), ids asked for but not found."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_found: list[str] = field(default_factory=list)


Visit = Callable[[DeadLetter, AbstractIncomingMessage], Awaitable[bool]]
"""Called for each message read; returns True when it settled (acked) the message itself."""


class DeadLetters:
    """The dead-letter queue of one deployment; an async context manager.

    ::

        async with DeadLetters(ClientSettings()) as dead:
            for letter in await dead.list():
                print(letter.id, letter.origin_queue, letter.error_code)
            await dead.replay(["<message id>"])
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = settings.topology
        self._connection: AbstractConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._exchanges: Exchanges | None = None

    async def __aenter__(self) -> DeadLetters:
        # A plain connection: a robust one answers passive declares from its
        # cache (stale message counts, INFRA.md), and a command is short-lived.
        self._connection = await aio_pika.connect(
            self.settings.amqp_url.get_secret_value(), client_properties={"connection_name": "pagewire-dead"}
        )
        # Confirms plus on_return_raises: an unroutable replay raises instead of vanishing.
        self._publish_channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._exchanges = await declare_topology(self._publish_channel, self.topology)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._connection is not None:
            await self._connection.close()  # hands back anything still unacked

    @property
    def connection(self) -> AbstractConnection:
        if self._connection is None:
            raise RuntimeError("use DeadLetters as an async context manager")
        return self._connection

    async def depth(self) -> int:
        """Messages ready in the dead queue now (those held unacked by a reader are not counted)."""
        channel = await self.connection.channel()
        try:
            queue = await channel.declare_queue(self.topology.dead_queue, passive=True)
            return int(queue.declaration_result.message_count or 0)
        finally:
            await channel.close()

    async def _scan(self, visit: Visit, limit: int | None = None) -> None:
        """Read up to ``limit`` messages (at most the depth at start) with basic.get; hand back all not settled."""
        budget = await self.depth()
        if limit is not None:
            budget = min(budget, limit)
        channel = await self.connection.channel()
        held: list[AbstractIncomingMessage] = []
        try:
            queue = await channel.get_queue(self.topology.dead_queue, ensure=False)
            for _ in range(budget):
                message = await queue.get(no_ack=False, fail=False, timeout=30)
                if message is None:
                    break
                if not await visit(DeadLetter.of(message), message):
                    held.append(message)
        finally:
            for message in held:
                if not channel.is_closed:
                    await message.nack(requeue=True)
            if not channel.is_closed:
                await channel.close()

    async def list(self, limit: int | None = None) -> list[DeadLetter]:
        """The messages in the dead queue, oldest first; none is removed."""
        letters: list[DeadLetter] = []

        async def keep(letter: DeadLetter, _: AbstractIncomingMessage) -> bool:
            letters.append(letter)
            return False

        await self._scan(keep, limit)
        return letters

    def _route(self, origin: str, to_queue_of_origin: bool) -> tuple[AbstractExchange, str]:
        """The exchange and routing key that put a message on ``origin``."""
        if self._publish_channel is None or self._exchanges is None:
            raise RuntimeError("use DeadLetters as an async context manager")
        if to_queue_of_origin:
            return self._publish_channel.default_exchange, origin
        routes = {
            self.topology.jobs_queue: (self._exchanges.jobs, JOB_ROUTING_KEY),
            self.topology.tasks_queue: (self._exchanges.tasks, TASK_ROUTING_KEY),
            self.topology.tasks_high_queue: (self._exchanges.tasks, HIGH_TASK_ROUTING_KEY),
            self.topology.recorder_queue: (self._exchanges.events, ""),
        }
        if origin not in routes:
            raise LookupError(f"queue {origin!r} is not one of this prefix's work queues; try --to-queue-of-origin")
        return routes[origin]

    async def _republish(self, letter: DeadLetter, message: AbstractIncomingMessage, to_queue_of_origin: bool) -> None:
        if letter.origin_queue is None:
            raise LookupError("no origin queue in its headers (no x-pagewire-queue, no x-death)")
        exchange, routing_key = self._route(letter.origin_queue, to_queue_of_origin)
        headers = {k: v for k, v in (message.headers or {}).items() if k not in DEAD_LETTER_HEADERS}
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=message.priority,
            correlation_id=message.correlation_id,
            message_id=message.message_id,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
        )
        await exchange.publish(copy, routing_key, mandatory=True, timeout=30)

    async def replay(self, ids: Collection[str] | None, *, to_queue_of_origin: bool = False) -> Outcome:
        """Send the named messages (``None``: all) back to their origin queue; ack each dead copy once confirmed."""
        outcome = Outcome()
        wanted = None if ids is None else set(ids)

        async def replay_one(letter: DeadLetter, message: AbstractIncomingMessage) -> bool:
            if wanted is not None and letter.id not in wanted:
                return False
            try:
                await self._republish(letter, message, to_queue_of_origin)
            except (LookupError, AMQPError, TimeoutError) as exc:
                outcome.failed[letter.id] = str(exc) or type(exc).__name__
                return False
            await message.ack()
            outcome.done.append(letter.id)
            return True

        await self._scan(replay_one)
        outcome.not_found = sorted((wanted or set()) - set(outcome.done) - set(outcome.failed))
        return outcome

    async def purge(self, ids: Collection[str] | None) -> Outcome:
        """Drop the named messages (``None``: all) for good."""
        outcome = Outcome()
        wanted = None if ids is None else set(ids)

        async def drop(letter: DeadLetter, message: AbstractIncomingMessage) -> bool:
            if wanted is not None and letter.id not in wanted:
                return False
            await message.ack()
            outcome.done.append(letter.id)
            return True

        await self._scan(drop)
        outcome.not_found = sorted((wanted or set()) - set(outcome.done))
        return outcome


# --- command line -----------------------------------------------------------------


def _line(letter: DeadLetter) -> str:
    when = letter.dead_lettered_at.strftime("%Y-%m-%d %H:%M:%S") if letter.dead_lettered_at else "-"
    why = letter.error_code or letter.reason
    attempts = f"x{letter.attempts}" if letter.attempts else ""
    head = f"{letter.id}  {letter.type or '?'}  job={letter.job_id or '-'}  from={letter.origin_queue or '?'}"
    return f"{head}  {why}{attempts}  {when}  {letter.body_bytes} B\n    {letter.error or ''}".rstrip()


async def _list(args: argparse.Namespace) -> int:
    async with DeadLetters(ClientSettings()) as dead:
        depth = await dead.depth()
        letters = await dead.list(args.limit)
    if args.json:
        for letter in letters:
            print(json.dumps(letter.to_json()))
        return EXIT_OK
    for letter in letters:
        print(_line(letter))
    print(f"{depth} message(s) in {dead.topology.dead_queue}, {len(letters)} shown", file=sys.stderr)
    return EXIT_OK


def _selection(args: argparse.Namespace, verb: str) -> list[str] | int | None:
    if args.all == bool(args.ids):
        print(f"pagewire dead {verb}: name MESSAGE_IDs or give --all (not both)", file=sys.stderr)
        return EXIT_USAGE
    return None if args.all else list(args.ids)


def _report(outcome: Outcome, verb: str) -> int:
    for letter_id in outcome.done:
        print(f"{verb} {letter_id}")
    for letter_id, why in outcome.failed.items():
        print(f"pagewire: not {verb} {letter_id}: {why}", file=sys.stderr)
    for letter_id in outcome.not_found:
        print(f"pagewire: no dead message {letter_id}", file=sys.stderr)
    if outcome.failed:
        return EXIT_JOB_FAILED
    return EXIT_NOT_FOUND if outcome.not_found else EXIT_OK


async def _replay(args: argparse.Namespace) -> int:
    ids = _selection(args, "replay")
    if isinstance(ids, int):
        return ids
    async with DeadLetters(ClientSettings()) as dead:
        outcome = await dead.replay(ids, to_queue_of_origin=args.to_queue_of_origin)
    return _report(outcome, "replayed")


async def _purge(args: argparse.Namespace) -> int:
    ids = _selection(args, "purge")
    if isinstance(ids, int):
        return ids
    async with DeadLetters(ClientSettings()) as dead:
        outcome = await dead.purge(ids)
    return _report(outcome, "purged")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``pagewire dead list|replay|purge`` to the CLI's subparsers; returns the ``dead`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dead",
        help="inspect, replay or purge dead-lettered messages",
        description="The dead-letter queue: messages a role or the broker gave up on, with the reason.",
    )
    actions = parser.add_subparsers(dest="dead_command", required=True, metavar="ACTION")

    p = actions.add_parser(
        "list",
        help="show the dead messages (none is removed)",
        description="Show each dead message: id, type, job, origin queue, error code or broker reason, attempts.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per message and line")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="show at most N messages")
    p.set_defaults(func=_list)

    p = actions.add_parser(
        "replay",
        help="send dead messages back to the queue they came from",
        description="Republish dead messages to their origin (confirmed), then remove them from the dead queue.",
    )
    p.add_argument("ids", nargs="*", metavar="MESSAGE_ID", help="ids as `pagewire dead list` shows them")
    p.add_argument("--all", action="store_true", help="every message in the dead queue")
    p.add_argument(
        "--to-queue-of-origin",
        action="store_true",
        help="publish straight into the origin queue (default exchange) instead of through its exchange;"
        " for recorder events this avoids re-broadcasting them to every subscriber",
    )
    p.set_defaults(func=_replay)

    p = actions.add_parser(
        "purge",
        help="drop dead messages for good",
        description="Remove dead messages without replaying them.",
    )
    p.add_argument("ids", nargs="*", metavar="MESSAGE_ID")
    p.add_argument("--all", action="store_true", help="every message in the dead queue")
    p.set_defaults(func=_purge)
    return parser
