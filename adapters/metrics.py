"""Prometheus metrics, health endpoints and log context for every role.

Each role process serves one small HTTP endpoint on ``PAGEWIRE_METRICS_PORT``
(9100 unless set; 0 turns it off):

- ``/metrics``: the Prometheus text format (OpenMetrics when asked for);
- ``/healthz``: liveness. The server runs on the role's own event loop, so an
  answer proves the process is alive *and* its loop is not blocked: a page
  rendered on the loop by mistake, or a deadlock, makes the probe time out;
- ``/readyz``: readiness. 200 only while the role is connected to the broker
  and consuming (:class:`Health`), 503 while it starts, reconnects or drains.

The server is a few dozen lines on :func:`asyncio.start_server` rather than a
web framework: it needs three GET routes, and a thread-based server (the one
``prometheus_client`` ships) would keep answering ``/healthz`` while the event
loop is wedged, which is the one failure the liveness probe exists to catch.

The metric objects are module globals, as ``prometheus_client`` intends: the
roles import and update them where the work happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any, Final

from aio_pika.abc import AbstractRobustConnection
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 9100
METRICS_PATH: Final = "/metrics"
HEALTH_PATH: Final = "/healthz"
READY_PATH: Final = "/readyz"

# Pages take from milliseconds (text layer) to a minute (a dense scan on a CPU).
PAGE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
# Queue lag spans an idle queue (ms) to a backlog drained over hours.
LAG_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0)
APPLY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_BUCKETS: Final = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 4 * 3600.0, 86400.0)

PAGES = Counter(
    "pagewire_pages",
    "Pages read by a worker, by engine and outcome (completed or failed).",
    ["engine", "outcome"],
)
PAGE_SECONDS = Histogram(
    "pagewire_page_seconds",
    "Time to read one page (fetch excluded: render and OCR), by engine.",
    ["engine"],
    buckets=PAGE_BUCKETS,
)
TASK_LAG_SECONDS = Histogram(
    "pagewire_task_lag_seconds",
    "Time from a message's publication (its AMQP timestamp) to the start of its handling, by queue.",
    ["queue"],
    buckets=LAG_BUCKETS,
)
MESSAGES = Counter(
    "pagewire_messages",
    "Messages a role settled, by queue and outcome (ack, retry, dead_letter).",
    ["queue", "outcome"],
)
IN_FLIGHT = Gauge("pagewire_messages_in_flight", "Messages being handled now, by queue.", ["queue"])
RECORDER_APPLY_SECONDS = Histogram(
    "pagewire_recorder_apply_seconds",
    "Time to apply one batch of events to PostgreSQL, retries included.",
    buckets=APPLY_BUCKETS,
)
RECORDER_BATCH_EVENTS = Histogram(
    "pagewire_recorder_batch_events",
    "Events per applied batch.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
RECORDER_EVENTS = Counter("pagewire_recorder_events", "Events the recorder applied, by event type.", ["type"])
JOBS = Counter("pagewire_jobs", "Jobs that reached a final status, by status.", ["status"])
JOB_SECONDS = Histogram(
    "pagewire_job_seconds",
    "Time from a job's creation to its final status, by status.",
    ["status"],
    buckets=JOB_BUCKETS,
)
READY = Gauge("pagewire_ready", "1 while this role is connected to the broker and consuming.", ["role"])
LOOP_LAG_SECONDS = Gauge(
    "pagewire_event_loop_lag_seconds", "How late the event loop woke a 1 s timer, last measured (blocking work)."
)


def observe_lag(queue: str, published_at: datetime | None, now: datetime | None = None) -> float | None:
    """Record how long a message waited in ``queue``; None (nothing recorded) without a timestamp.

    AMQP timestamps have whole-second resolution and clocks drift between
    hosts, so a negative lag is clamped to zero rather than dropped.
    """
    if published_at is None:
        return None
    if published_at.tzinfo is None:
        published_at = published_at.replace(tzinfo=UTC)  # aiormq decodes AMQP timestamps as naive UTC
    lag = max(0.0, ((now or datetime.now(UTC)) - published_at).total_seconds())
    TASK_LAG_SECONDS.labels(queue=queue).observe(lag)
    return lag


def observe_page(engine: str, outcome: str, seconds: float) -> None:
    """Count one page and its duration; ``outcome`` is ``completed`` or ``failed``."""
    PAGES.labels(engine=engine, outcome=outcome).inc()
    PAGE_SECONDS.labels(engine=engine).observe(seconds)


def observe_job(status: str, created_at: datetime | None, ended_at: datetime | None = None) -> None:
    """Count a job that reached ``status`` and, when its creation time is known, its duration."""
    JOBS.labels(status=status).inc()
    if created_at is None:
        return
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    JOB_SECONDS.labels(status=status).observe(max(0.0, ((ended_at or datetime.now(UTC)) - created_at).total_seconds()))


@contextlib.contextmanager
def in_flight(queue: str) -> Iterator[None]:
    """Count a message as in hand while the block runs."""
    gauge = IN_FLIGHT.labels(queue=queue)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


class Health:
    """What the probes ask: is this role ready, and when did it last do something.

    A role marks itself ready once it consumes, not ready while its broker
    connection is down (:meth:`watch`) and while it drains on SIGTERM.
    """

    def __init__(self, role: str) -> None:
        self.role = role
        self.started_at = time.time()
        self.last_activity: float | None = None
        self._ready = False
        self._reason = "starting"
        READY.labels(role=role).set(0)

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def reason(self) -> str:
        return self._reason

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Flip readiness; ``reason`` says why a role is not ready, for people reading ``/readyz``."""
        if ready != self._ready:
            log.info("%s %s%s", self.role, "ready" if ready else "not ready", f": {reason}" if reason else "")
        self._ready = ready
        self._reason = "" if ready else (reason or "not ready")
        READY.labels(role=self.role).set(1 if ready else 0)

    def beat(self) -> None:
        """Note activity (a message handled); shown on the health endpoints, never fatal when old.

        An idle worker on an empty queue is healthy, so age alone must not fail a probe.
        """
        self.last_activity = time.time()

    def watch(self, connection: AbstractRobustConnection) -> None:
        """Follow a robust connection: not ready while it is lost, ready again once it is restored."""

        def lost(_: Any, exc: BaseException | None = None) -> None:
            self.set_ready(False, f"broker connection lost: {exc}" if exc else "broker connection closed")

        def restored(_: Any) -> None:
            self.set_ready(True)

        connection.close_callbacks.add(lost)
        connection.reconnect_callbacks.add(restored)

    def snapshot(self) -> dict[str, Any]:
        """The body of the health endpoints."""
        now = time.time()
        return {
            "role": self.role,
            "ready": self._ready,
            "reason": self._reason or None,
            "uptime_s": round(now - self.started_at, 3),
            "last_activity_s_ago": None if self.last_activity is None else round(now - self.last_activity, 3),
        }


class MetricsServer:
    """The HTTP endpoint of one role: ``/metrics``, ``/healthz``, ``/readyz``."""

    def __init__(self, health: Health, registry: CollectorRegistry = REGISTRY) -> None:
        self.health = health
        self.registry = registry
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when started on port 0)."""
        assert self._server is not None and self._server.sockets, "server not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, port: int, host: str = "0.0.0.0") -> MetricsServer:
        """Listen on ``host:port`` (port 0: any free port) and start measuring event-loop lag.

        All interfaces by default: the kubelet's probes and Prometheus come from outside the pod.
        """
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        self._ticker = asyncio.create_task(_measure_loop_lag(), name="pagewire-loop-lag")
        log.info("%s serving metrics and health on %s:%s", self.health.role, host, self.port)
        return self

    async def close(self) -> None:
        """Stop listening; requests in progress are cut (they are tiny)."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # A client that never finishes its request must not hold a socket forever.
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5.0)
            status, content_type, body = self.respond(head)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            if not head.startswith(b"HEAD "):
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def respond(self, head: bytes) -> tuple[str, str, bytes]:
        """Status line, content type and body for one request head (pure: tested without sockets)."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET and HEAD\n"
        path = parts[1].split("?", 1)[0]
        if path == METRICS_PATH:
            accept = next((ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("accept:")), "")
            encoder, content_type = choose_encoder(accept)
            return "200 OK", content_type, encoder(self.registry)
        if path == HEALTH_PATH:
            return "200 OK", "application/json", _json({"status": "ok", **self.health.snapshot()})
        if path == READY_PATH:
            snapshot = self.health.snapshot()
            if self.health.ready:
                return "200 OK", "application/json", _json({"status": "ready", **snapshot})
            return "503 Service Unavailable", "application/json", _json({"status": "not ready", **snapshot})
        return "404 Not Found", "text/plain", b"try /metrics, /healthz or /readyz\n"


@contextlib.asynccontextmanager
async def serving(port: int, health: Health, host: str = "0.0.0.0") -> AsyncIterator[MetricsServer | None]:
    """Serve metrics and health for the block's duration; ``port`` 0 serves nothing (metrics off)."""
    if port == 0:
        yield None
        return
    try:
        server = await MetricsServer(health).start(port, host)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # An exit with one line that says what to change: as a plain OSError it would read as a
        # service that cannot be reached.
        raise SystemExit(
            f"pagewire: metrics port {port} on {host} is in use by another process: "
            "set PAGEWIRE_METRICS_PORT to a free port, or to 0 for no metrics server"
        ) from None
    try:
        yield server
    finally:
        await server.close()


async def _measure_loop_lag(interval_s: float = 1.0) -> None:
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval_s)
        LOOP_LAG_SECONDS.set(max(0.0, loop.time() - started - interval_s))


def _json(value: dict[str, Any]) -> bytes:
    return (json.dumps(value) + "\n").encode()
