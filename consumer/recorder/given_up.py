"""Ending what the broker gave up on: the pages of a dead-lettered task.

Every dead-lettered message reaches the recorder's own queue on the dead
exchange (a fanout; ``pagewire dead`` reads its own copy). When a worker dies on
a task every time it holds it (a page that gets the process killed for memory,
say), nobody is left to report its pages: the broker dead-letters it after the
delivery limit, and without this its job would stay ``running`` for ever. So
each page of a dead-lettered ``PageTask`` gets a final ``PageFailed``, published
like any worker's: ``process_crashed`` when the broker gave up (reason
``delivery_limit``, no pagewire code), the code a role attached otherwise. The
page rows only move up the ranks, so a page an earlier attempt completed stays
completed and counts once, and a task replayed later (``pagewire dead replay``)
still completes its pages and the job.

A ``JobRequest`` the broker gave up on is left alone: failing its job would
keep a replay of the request (the way back once the planner is fixed) from
ever completing it.

Each event id is derived from the task, so a notification handled twice sends
events that count once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from adapters.amqp import Publisher, ack, reject
from schemas.errors import ErrorCode, PagewireError
from schemas.messages import (
    Event,
    PageFailed,
    PageTask,
    completion_event_id,
    parse_as,
)
from schemas.names import HEADER_ATTEMPTS, HEADER_DEATH, HEADER_ERROR, HEADER_ERROR_CODE, HEADER_TYPE
from schemas.settings import RecorderSettings

log = logging.getLogger(__name__)

MAX_TASK_PAGES = 100_000
"""More pages than any task the planner makes (its page limit is far lower): a body naming more is
not a task of ours, and ending its pages one event each would take the recorder's memory."""

DEAD_LETTER_WORKER = "dead-letter"
"""The ``worker`` of a page failed because the broker (or a role) gave up on its task."""


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def broker_reason(headers: Mapping[str, Any]) -> str | None:
    """Why the broker dead-lettered a message (``delivery_limit``, ``rejected``...); None if it did not."""
    deaths = headers.get(HEADER_DEATH)
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        reason = deaths[0].get("reason")
        return _text(reason) if reason is not None else None
    return None


def failure_of(headers: Mapping[str, Any]) -> tuple[ErrorCode, str]:
    """The code and message a dead-lettered message's pages or job end with."""
    code = headers.get(HEADER_ERROR_CODE)
    if code is not None:
        try:
            return ErrorCode(_text(code)), _text(headers.get(HEADER_ERROR, ""))[:500]
        except ValueError:
            return ErrorCode.RETRIES_EXHAUSTED, f"dead-lettered with an unknown code {_text(code)[:100]!r}"
    reason = broker_reason(headers)
    if reason == "delivery_limit":
        return (
            ErrorCode.PROCESS_CRASHED,
            "the broker gave up on its task after the delivery limit: "
            "a worker took it and died every time (a crash, or killed for memory)",
        )
    return ErrorCode.RETRIES_EXHAUSTED, f"the broker dead-lettered its message ({reason or 'no reason given'})"


def _type_in(body: bytes) -> str:
    """The ``type`` a body names, for messages published without pagewire's headers (other languages)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return ""
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else ""


def _attempts(headers: Mapping[str, Any]) -> int:
    value = headers.get(HEADER_ATTEMPTS)
    if isinstance(value, int) and value >= 1:
        return value
    deaths = headers.get(HEADER_DEATH)
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        count = deaths[0].get("count")
        if isinstance(count, int) and count >= 1:
            return count
    return 1


def ending_events(body: bytes, headers: Mapping[str, Any], max_bytes: int) -> list[Event]:
    """The events that end what a dead-lettered message left open; none for other messages.

    A body that does not parse names nothing certain (the role that refused it has already
    failed what it could); a message of another type (an event the recorder set aside) needs
    nothing more.
    """
    kind = _text(headers.get(HEADER_TYPE, "")) or _type_in(body)
    code, message = failure_of(headers)
    try:
        if kind == "PageTask":
            task = parse_as(PageTask, body, max_bytes)
            if task.last_page - task.first_page >= MAX_TASK_PAGES:
                log.warning(
                    "dead-lettered task %s names %s pages: not a task pagewire made", task.task_id, task.last_page
                )
                return []
            attempts = _attempts(headers)
            return [
                PageFailed(
                    event_id=completion_event_id(task.job_id, f"dead:{task.task_id}:{page_no}"),
                    job_id=task.job_id,
                    page_no=page_no,
                    error_code=code,
                    message=message,
                    attempt=attempts,
                    final=True,
                    worker=DEAD_LETTER_WORKER,
                )
                for page_no in range(task.first_page, task.last_page + 1)
            ]
    except PagewireError as exc:
        log.info("dead-lettered %s that does not parse (%s): nothing to end", kind or "message", exc)
    return []


class GivenUp:
    """Consumes the recorder's dead-letter queue and publishes the events that end the pages it names."""

    def __init__(self, settings: RecorderSettings, publisher: Publisher, retry_s: float = 1.0) -> None:
        self.settings = settings
        self.publisher = publisher
        self.retry_s = retry_s

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """End the pages or job a dead letter names; ack once its events are confirmed."""
        try:
            events = ending_events(message.body, message.headers or {}, self.settings.max_message_bytes)
        except Exception:
            # A notification nothing can be made of: holding it would only take a prefetch slot for ever.
            log.exception("dead letter %s: could not tell what it leaves open; dropped", message.message_id)
            await ack(message)
            return
        try:
            for event in events:
                await self.publisher.publish_event(event)
        except Exception as exc:
            # The broker or the exchange is gone for a moment: the notification goes back, to be tried again.
            log.warning("could not end what dead letter %s names (%s); retrying", message.message_id, exc)
            await asyncio.sleep(self.retry_s)
            await reject(message, requeue=True)
            return
        if events:
            log.warning(
                "dead letter %s (job %s): %s event(s) sent to end it (%s)",
                message.message_id,
                events[0].job_id,
                len(events),
                events[0].type,
            )
        await ack(message)
