"""Preparing a batch without the database: parsing bodies, page rows, merging a page's events.

Pure and CPU-bound, so it runs while the batch before is in its transaction
(:func:`consumer.recorder.batching.pipelined`) and is tested without a server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from schemas.errors import PermanentError
from schemas.messages import (
    Block,
    Event,
    NumberDisagreement,
    PageCompleted,
    PageFailed,
    parse_event,
)
from schemas.tables import PageStatus, pages

PageEvent = PageCompleted | PageFailed
PAGE_RANK = {PageStatus.RETRYING: 1, PageStatus.FAILED: 2, PageStatus.COMPLETED: 3}


def page_status(event: PageEvent) -> PageStatus:
    """The status a page event gives its row: completed, failed (final) or retrying."""
    if isinstance(event, PageCompleted):
        return PageStatus.COMPLETED
    return PageStatus.FAILED if event.final else PageStatus.RETRYING


def merge_page_events(events: Sequence[PageEvent]) -> list[PageEvent]:
    """One event per page from a batch: the highest rank wins, the first of equals stays.

    PostgreSQL refuses to update one row twice in one ``INSERT ... ON CONFLICT``,
    and this is the same rule the upsert applies against rows already stored.
    """
    best: dict[tuple[str, int], PageEvent] = {}
    for event in events:
        key = (event.job_id, event.page_no)
        held = best.get(key)
        if held is None or PAGE_RANK[page_status(event)] > PAGE_RANK[page_status(held)]:
            best[key] = event
    return list(best.values())


_BLOCKS = TypeAdapter(list[Block])
_DISAGREEMENTS = TypeAdapter(list[NumberDisagreement])
_JSON_NULL = "null"  # what the JSON types store for None (a JSON null, not SQL NULL)
_EMPTY_LIST = "[]"
JSON_COLUMNS = frozenset({"blocks", "number_disagreements"})
PAGE_COLUMNS = [c.name for c in pages.columns]


def page_row(event: PageEvent, now: datetime | None) -> dict[str, Any]:
    """The ``pages`` row of an event, its JSON columns as JSON text (``updated_at`` is ``now``).

    A page's boxes are serialised in one call of pydantic's encoder, the cheapest way
    to turn many small models into JSON (docs/benchmarks.md).
    """
    row: dict[str, Any] = {
        "job_id": event.job_id,
        "page_no": event.page_no,
        "status": str(page_status(event)),
        "attempts": event.attempt,
        "worker": event.worker,
        "event_id": event.event_id,
        "updated_at": now,
        "engine": None,
        "text": None,
        "blocks": _JSON_NULL,
        "confidence": None,
        "duration_ms": None,
        "render_ms": None,
        "error_code": None,
        "error_message": None,
        "text_source": None,
        "rotation": 0,
        "number_disagreements": _EMPTY_LIST,
        "number_disagreement_count": 0,
    }
    if isinstance(event, PageCompleted):
        row.update(
            engine=str(event.engine),
            text=event.text,
            blocks=_BLOCKS.dump_json(event.blocks).decode(),
            confidence=event.confidence,
            duration_ms=event.duration_ms,
            render_ms=event.render_ms,
            text_source=str(event.text_source),
            rotation=event.rotation,
            number_disagreements=(
                _DISAGREEMENTS.dump_json(event.number_disagreements).decode()
                if event.number_disagreements
                else _EMPTY_LIST
            ),
            number_disagreement_count=len(event.number_disagreements),
        )
    else:
        row.update(error_code=str(event.error_code), error_message=event.message)
    return row


Columns = dict[str, list[Any]]
_PREPARED_COLUMNS = [name for name in PAGE_COLUMNS if name != "updated_at"]


def columns_of(rows: Sequence[dict[str, Any]]) -> Columns:
    """The page upsert's parameters, one array a column; ``updated_at`` is added when applying."""
    return {f"{name}_list": [row[name] for row in rows] for name in _PREPARED_COLUMNS}


@dataclass(frozen=True)
class PreparedBatch:
    """What :func:`apply_prepared` needs that can be made without the database.

    ``events`` are unique by event id (the first of each kept), in order of arrival; ``rows`` holds
    the ``pages`` row of every page event among them, by event id. ``merged`` and ``columns`` are
    the page events :func:`merge_page_events` keeps and their rows as the upsert's arrays, for the
    usual case where every event proves new; when some were applied before, the choice is made
    again among the new ones only, as it always was. ``received`` counts the events given, by
    type, duplicates included (for the metrics).
    """

    events: list[Event]
    rows: dict[str, dict[str, Any]]
    merged: list[PageEvent]
    columns: Columns
    received: dict[str, int]


class _Preparing:
    """A :class:`PreparedBatch` built one event at a time."""

    def __init__(self) -> None:
        self.unique: dict[str, Event] = {}
        self.rows: dict[str, dict[str, Any]] = {}
        self.received: dict[str, int] = {}

    def add(self, event: Event) -> None:
        self.received[event.type] = self.received.get(event.type, 0) + 1
        if event.event_id in self.unique:
            return
        self.unique[event.event_id] = event
        if isinstance(event, PageCompleted | PageFailed):
            self.rows[event.event_id] = page_row(event, None)

    def done(self) -> PreparedBatch:
        events = list(self.unique.values())
        merged = merge_page_events([e for e in events if isinstance(e, PageCompleted | PageFailed)])
        return PreparedBatch(
            events, self.rows, merged, columns_of([self.rows[e.event_id] for e in merged]), self.received
        )


def prepare_batch(events: Iterable[Event]) -> PreparedBatch:
    """Everything about applying ``events`` that needs no database: dedupe, page rows, their arrays."""
    preparing = _Preparing()
    for event in events:
        preparing.add(event)
    return preparing.done()


# Preparing is CPU on the event loop: it lets the loop run this often, so a transaction applying
# meanwhile sends its next statement as soon as PostgreSQL answers the last, rather than after the
# whole batch is prepared.
PAUSE_EVERY = 32


async def prepare_events(events: Sequence[Event]) -> PreparedBatch:
    """:func:`prepare_batch`, letting the event loop run every :data:`PAUSE_EVERY` events."""
    preparing = _Preparing()
    for n, event in enumerate(events, 1):
        preparing.add(event)
        if n % PAUSE_EVERY == 0:
            await asyncio.sleep(0)
    return preparing.done()


async def prepare_bodies(bodies: Sequence[bytes], max_bytes: int) -> tuple[PreparedBatch, dict[int, PermanentError]]:
    """Parse message bodies and prepare their events as :func:`prepare_events` does.

    Returns the batch and, by index in ``bodies``, the bodies that are no event (for the dead-letter queue).
    """
    preparing = _Preparing()
    poison: dict[int, PermanentError] = {}
    for n, body in enumerate(bodies):
        try:
            preparing.add(parse_event(body, max_bytes))
        except PermanentError as exc:
            poison[n] = exc
        if (n + 1) % PAUSE_EVERY == 0:
            await asyncio.sleep(0)
    return preparing.done(), poison
