"""Live events for HTTP clients: one subscription per gateway, fanned out to server-sent event streams.

The gateway binds one private queue to the events exchange when it starts
(:class:`EventHub`) and hands each event to the streams that follow its job,
so a thousand browsers cost one queue, not a thousand. A stream turns events
into four names a browser can use (``start``, ``page``, ``complete``,
``error``) with the progress figures already worked out (:class:`JobFollower`).

A stream that (re)connects first replays what the status tables already hold
(the ``start``, every recorded page, the end if there is one), then goes on
with live events, sending each page once per status. Events can pass the
gateway before the recorder has written them, and the other way round, so a
follower also looks at the tables when the stream has been quiet for a while
and before it reports the end: the job's row first, and only the pages it has
missed, when the row's counts say it has missed some (:func:`_catch_up`).

Each stream's inbox holds at most :data:`INBOX_SIZE` events. A client that
stops reading stops its stream, not the hub: once its inbox is full the hub
drops it and its events, and the stream, should the client read again, takes
up from the tables with a new inbox. Memory per stream stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from producer.api import Client
from producer.web import jobs as store
from schemas.messages import (
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobQueued,
    JobStarted,
    PageCompleted,
    PageFailed,
)
from schemas.tables import TERMINAL_JOB_STATUSES, JobStatus

log = logging.getLogger(__name__)

INBOX_SIZE = 256
"""Events buffered for one stream; a stream this far behind is dropped by the hub and catches up from the tables.

Small on purpose: a page event carries the page's text, and a client that
stops reading must not pin thousands of them."""

Item = tuple[str, dict[str, Any]]
"""An SSE event name and its JSON data."""

Visibility = Callable[[str], Awaitable[bool]]
"""Whether a stream's caller may see a job's events, by job id."""


class Inbox:
    """The events of one stream, in arrival order; when full it empties and is dropped instead of growing."""

    def __init__(self, job_id: str | None, size: int = INBOX_SIZE) -> None:
        self.job_id = job_id
        self.queue: asyncio.Queue[Event] = asyncio.Queue(size)
        self.overflowed = False

    def put(self, event: Event) -> bool:
        """Queue ``event``; False when the inbox overflowed (it is then empty, and takes nothing more)."""
        if self.overflowed:
            return False
        try:
            self.queue.put_nowait(event)
            return True
        except asyncio.QueueFull:
            # Let the events go now: the reader, if it ever reads again, catches up from the tables.
            self.overflowed = True
            while not self.queue.empty():
                self.queue.get_nowait()
            return False

    async def get(self, quiet_s: float) -> Event | None:
        """The next event, or None after ``quiet_s`` seconds of quiet."""
        try:
            return await asyncio.wait_for(self.queue.get(), quiet_s)
        except TimeoutError:
            return None


class EventHub:
    """One subscription to the events exchange, shared by every stream of this process."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._inboxes: dict[str | None, set[Inbox]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and self._ready.is_set()

    async def start(self, wait_s: float = 30.0) -> None:
        """Bind the queue; returns once events flow, so no stream opened afterwards misses one."""
        self._task = asyncio.create_task(self._run(), name="pagewire-http-events")
        await asyncio.wait_for(self._ready.wait(), wait_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        # A malformed event or a lost channel ends one subscription, never the gateway: bind again.
        while True:
            try:
                async with self.client.subscribe() as events:
                    self._ready.set()
                    async for event in events:
                        self._dispatch(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event subscription ended; binding again in 1 s")
                self._ready.clear()
                await asyncio.sleep(1.0)

    def _dispatch(self, event: Event) -> None:
        for inbox in (*self._inboxes.get(event.job_id, ()), *self._inboxes.get(None, ())):
            if not inbox.put(event):
                log.info("a stream of %s fell %d events behind; dropped", inbox.job_id or "every job", INBOX_SIZE)
                self.close_inbox(inbox)

    def open_inbox(self, job_id: str | None) -> Inbox:
        """An inbox for one job's events (``None``: every job's) until :meth:`close_inbox`."""
        inbox = Inbox(job_id)
        self._inboxes.setdefault(job_id, set()).add(inbox)
        return inbox

    def close_inbox(self, inbox: Inbox) -> None:
        """Stop filling ``inbox``; closing twice is harmless."""
        listeners = self._inboxes.get(inbox.job_id, set())
        listeners.discard(inbox)
        if not listeners:
            self._inboxes.pop(inbox.job_id, None)

    @contextlib.contextmanager
    def listen(self, job_id: str | None) -> Iterator[Inbox]:
        """An inbox for one job's events (``None``: every job's) for the life of the block."""
        inbox = self.open_inbox(job_id)
        try:
            yield inbox
        finally:
            self.close_inbox(inbox)


def result_links(job_id: str, result_keys: dict[str, str] | None) -> dict[str, str]:
    """The gateway's links to a job's result files."""
    return {fmt: f"/jobs/{job_id}/result?format={fmt}" for fmt in sorted(result_keys or {})}


@dataclass
class JobFollower:
    """What one stream has told its client about one job: the pure core of the streams.

    ``from_row``/``from_pages``/``from_event`` return the SSE items the client
    has not seen yet and remember that it has now.
    """

    job_id: str
    with_text: bool = True
    total: int | None = None
    started: bool = False
    ended: bool = False
    pages: dict[int, str] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return sum(1 for status in self.pages.values() if status in store.DONE_PAGE_STATUSES)

    def progress(self) -> dict[str, Any]:
        percent = round(100.0 * self.done / self.total, 1) if self.total else None
        return {"pages_done": self.done, "total_pages": self.total, "percent": percent}

    def _start(self, total: int, first_page: int | None, last_page: int | None) -> list[Item]:
        self.total = total
        if self.started:
            return []
        self.started = True
        data = {"job_id": self.job_id, "status": JobStatus.RUNNING.value, "first_page": first_page}
        data |= {"last_page": last_page, **self.progress()}
        return [("start", data)]

    def _page(self, page_no: int, status: str, detail: dict[str, Any]) -> list[Item]:
        if self.ended or self.pages.get(page_no) == status:
            return []
        if self.pages.get(page_no) in store.DONE_PAGE_STATUSES and status == "retrying":
            return []  # a late retry notice must not undo a page already done
        self.pages[page_no] = status
        data = {"job_id": self.job_id, "page_no": page_no, "status": status, **detail, **self.progress()}
        if not self.with_text:
            data.pop("text", None)
            data.pop("blocks", None)
        return [("page", data)]

    def _end(self, name: str, data: dict[str, Any]) -> list[Item]:
        if self.ended:
            return []
        self.ended = True
        return [(name, {"job_id": self.job_id, **data})]

    def from_row(self, row: dict[str, Any]) -> list[Item]:
        """The job's row: a start once it has a page count, an end once it is final."""
        items: list[Item] = []
        if row["total_pages"]:
            items += self._start(row["total_pages"], None, None)
        status = row["status"]
        if status in TERMINAL_JOB_STATUSES:
            if status in (JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_ERRORS):
                keys = row.get("result_keys") or {}
                items += self._end(
                    "complete",
                    {
                        "status": status,
                        "pages_ok": row["pages_ok"],
                        "pages_failed": row["pages_failed"],
                        "result_keys": keys,
                        "links": result_links(self.job_id, keys),
                        **self.progress(),
                    },
                )
            else:
                items += self._end(
                    "error", {"status": status, "error_code": row["error_code"], "message": row["error_message"]}
                )
        return items

    def from_pages(self, rows: list[dict[str, Any]]) -> list[Item]:
        """Page rows the client has not seen in their current status."""
        items: list[Item] = []
        for row in rows:
            detail = {k: _plain(v) for k, v in row.items() if k not in ("page_no", "status")}
            items += self._page(row["page_no"], row["status"], detail)
        return items

    def from_event(self, event: Event) -> list[Item]:
        """A live event; ``complete`` needs the tables first (see :meth:`needs_final_read`)."""
        if isinstance(event, JobStarted):
            return self._start(event.total_pages, event.first_page, event.last_page)
        if isinstance(event, PageCompleted):
            detail = {
                "engine": event.engine.value,
                "confidence": event.confidence,
                "duration_ms": event.duration_ms,
                "attempts": event.attempt,
                "text": event.text,
                "blocks": [b.model_dump() for b in event.blocks],
            }
            return self._page(event.page_no, "completed", detail)
        if isinstance(event, PageFailed):
            status = "failed" if event.final else "retrying"
            detail = {"error_code": event.error_code.value, "error_message": event.message, "attempts": event.attempt}
            return self._page(event.page_no, status, detail)
        if isinstance(event, JobCompleted):
            status = JobStatus.COMPLETED if event.pages_failed == 0 else JobStatus.COMPLETED_WITH_ERRORS
            if self.total is None:
                self.total = event.pages_ok + event.pages_failed
            return self._end(
                "complete",
                {
                    "status": status.value,
                    "pages_ok": event.pages_ok,
                    "pages_failed": event.pages_failed,
                    "result_keys": event.result_keys,
                    "links": result_links(self.job_id, event.result_keys),
                    **self.progress(),
                },
            )
        if isinstance(event, JobFailed):
            return self._end(
                "error",
                {"status": JobStatus.FAILED.value, "error_code": event.error_code.value, "message": event.message},
            )
        if isinstance(event, JobCancelled):
            return self._end(
                "error", {"status": JobStatus.CANCELLED.value, "error_code": None, "message": event.reason}
            )
        return []

    def needs_final_read(self, event: Event) -> bool:
        """A ``JobCompleted`` while pages are missing here: read them from the tables before the end."""
        return isinstance(event, JobCompleted) and not self.ended and self.done < event.pages_ok + event.pages_failed


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


async def _read(db: AsyncEngine, follower: JobFollower) -> list[Item]:
    """Everything the tables hold that ``follower`` has not sent: start, pages, end."""
    row = await store.get_job(db, follower.job_id)
    if row is None:
        return []
    items: list[Item] = []
    if row["total_pages"]:
        items += follower._start(row["total_pages"], None, None)
    items += follower.from_pages(await store.get_pages(db, follower.job_id, with_text=follower.with_text))
    return items + follower.from_row(row)


async def _catch_up(db: AsyncEngine, follower: JobFollower) -> list[Item]:
    """After a quiet spell: what the tables hold that ``follower`` has not sent, read as little as it can.

    The job's row comes first (one row); pages are read only when its counts
    say some were missed, and the text only of those. A quiet stream of a
    large job thus costs one small query, not every page's text again.
    """
    row = await store.get_job(db, follower.job_id)
    if row is None:
        return []
    items: list[Item] = []
    if row["total_pages"]:
        items += follower._start(row["total_pages"], None, None)
    if row["pages_ok"] + row["pages_failed"] > follower.done:
        statuses = await store.get_pages(db, follower.job_id)
        missed = [p["page_no"] for p in statuses if follower.pages.get(p["page_no"]) != p["status"]]
        if missed:
            rows = await store.get_pages(db, follower.job_id, with_text=follower.with_text, page_nos=missed)
            items += follower.from_pages(rows)
    return items + follower.from_row(row)


async def follow_job(
    hub: EventHub,
    db: AsyncEngine,
    job_id: str,
    *,
    with_text: bool = True,
    quiet_s: float = 5.0,
    inbox: Inbox | None = None,
) -> AsyncIterator[Item]:
    """One job's items until its end: first what the tables hold, then live events.

    ``inbox``: one opened before the job was submitted (this closes it), so not
    even its first events can slip past.
    """
    follower = JobFollower(job_id, with_text=with_text)
    # Listen before reading, so an event that lands between the read and the first wait is not lost.
    inbox = inbox or hub.open_inbox(job_id)
    try:
        for item in await _read(db, follower):
            yield item
        while not follower.ended:
            if inbox.overflowed:  # dropped by the hub while the client did not read: listen again, then catch up
                hub.close_inbox(inbox)
                inbox = hub.open_inbox(job_id)
                items = await _catch_up(db, follower)
            elif (event := await inbox.get(quiet_s)) is None:
                items = await _catch_up(db, follower)
            elif follower.needs_final_read(event):
                items = await _catch_up(db, follower) + follower.from_event(event)
            else:
                items = follower.from_event(event)
            for item in items:
                yield item
    finally:
        hub.close_inbox(inbox)


async def follow_all(
    hub: EventHub, db: AsyncEngine, *, visible: Visibility | None = None, remember: int = 2000
) -> AsyncIterator[Item]:
    """Every job's items (``visible``: those it allows), without page text, for the status page.

    A job first seen mid-way is read from the tables once, quietly, so its
    figures start right; ``queued`` announces a job the page does not list yet.
    Whether a job is visible is asked once per job, when it is first seen.
    """
    followers: OrderedDict[str, JobFollower | None] = OrderedDict()  # None: a job this stream may not show
    inbox = hub.open_inbox(None)
    try:
        while True:
            if inbox.overflowed:  # dropped while the client did not read: listen again; figures start afresh
                hub.close_inbox(inbox)
                inbox = hub.open_inbox(None)
                followers.clear()
            event = await inbox.get(15.0)
            if event is None:
                continue
            if event.job_id not in followers:
                shown = visible is None or await visible(event.job_id)
                follower = JobFollower(event.job_id, with_text=False) if shown else None
                followers[event.job_id] = follower
                while len(followers) > remember:
                    followers.popitem(last=False)
                if follower is not None and not isinstance(event, JobQueued):
                    # Its pages so far only set the figures; its start and end (if over already) go out.
                    for item in await _read(db, follower):
                        if item[0] != "page":
                            yield item
            followers.move_to_end(event.job_id)
            follower = followers[event.job_id]
            if follower is None:
                continue
            if isinstance(event, JobQueued):
                yield ("queued", {"job_id": event.job_id, "status": JobStatus.QUEUED.value})
            for item in follower.from_event(event):
                yield item
    finally:
        hub.close_inbox(inbox)


def sse(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return f"event: {name}\ndata: {json.dumps(data, default=str, separators=(',', ':'))}\n\n".encode()


async def sse_stream(items: AsyncIterator[Item], *, keepalive_s: float = 15.0) -> AsyncIterator[bytes]:
    """Items as SSE bytes, with a comment line every ``keepalive_s`` so proxies keep the connection."""
    yield b"retry: 2000\n\n"
    source = aiter(items)
    pending: asyncio.Task[Item] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=keepalive_s)
            if not done:
                yield b": keepalive\n\n"
                continue
            try:
                name, data = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            yield sse(name, data)
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        with contextlib.suppress(Exception):
            await source.aclose()  # type: ignore[attr-defined]
