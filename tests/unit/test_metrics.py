"""The metrics and health endpoint every role serves (adapters/metrics.py), over a real socket."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from adapters import logs, metrics
from schemas.errors import ConfigurationError


async def get(port: int, path: str, accept: str = "") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 GET on loopback; status, headers (lower-case names) and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = f"Accept: {accept}\r\n" if accept else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    return int(status_line.split(" ")[1]), headers, body


@pytest.fixture
async def served() -> AsyncIterator[tuple[metrics.Health, int]]:
    health = metrics.Health("worker")
    server = await metrics.MetricsServer(health).start(0, "127.0.0.1")
    try:
        yield health, server.port
    finally:
        await server.close()


async def test_metrics_endpoint_exposes_the_pagewire_families(served: tuple[metrics.Health, int]) -> None:
    # Given a worker that read one page and waited for one task
    _, port = served
    metrics.observe_page("rapidocr", "completed", 1.5)
    metrics.observe_lag("pagewire.tasks", datetime.now(UTC) - timedelta(seconds=3))

    # When Prometheus scrapes it
    status, headers, body = await get(port, "/metrics")

    # Then every family the dashboard uses is there, with the page counted
    text = body.decode()
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert int(headers["content-length"]) == len(body)
    assert 'pagewire_pages_total{engine="rapidocr",outcome="completed"}' in text
    assert 'pagewire_page_seconds_bucket{engine="rapidocr",le="2.5"}' in text
    assert 'pagewire_task_lag_seconds_count{queue="pagewire.tasks"}' in text
    for family in (
        "pagewire_recorder_apply_seconds",
        "pagewire_recorder_events_total",
        "pagewire_job_seconds",
        "pagewire_jobs_total",
        "pagewire_ready",
        "pagewire_messages_in_flight",
        "pagewire_event_loop_lag_seconds",
    ):
        assert f"# TYPE {family} " in text, family


async def test_openmetrics_when_asked(served: tuple[metrics.Health, int]) -> None:
    _, port = served
    status, headers, body = await get(port, "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


async def test_readyz_follows_the_health_object(served: tuple[metrics.Health, int]) -> None:
    # Given a role that has not connected yet
    health, port = served

    # Then it is alive but not ready
    status, _, body = await get(port, "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = await get(port, "/readyz")
    assert status == 503 and json.loads(body)["reason"] == "starting"

    # When it consumes, it is ready
    health.set_ready(True)
    health.beat()
    status, _, body = await get(port, "/readyz")
    assert status == 200
    assert json.loads(body)["last_activity_s_ago"] is not None

    # When it drains on SIGTERM, it is not ready again, and says why; still alive
    health.set_ready(False, "draining")
    status, _, body = await get(port, "/readyz")
    assert status == 503 and json.loads(body)["reason"] == "draining"
    assert (await get(port, "/healthz"))[0] == 200


async def test_unknown_paths_and_methods(served: tuple[metrics.Health, int]) -> None:
    _, port = served
    assert (await get(port, "/nope"))[0] == 404
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 405")


async def test_a_silent_client_does_not_stop_the_server(served: tuple[metrics.Health, int]) -> None:
    # Given a client that connects and sends nothing
    _, port = served
    _, idle = await asyncio.open_connection("127.0.0.1", port)
    try:
        # Then others are still answered
        assert (await get(port, "/healthz"))[0] == 200
    finally:
        idle.close()


async def test_serving_with_port_zero_serves_nothing() -> None:
    async with metrics.serving(0, metrics.Health("planner")) as server:
        assert server is None


async def test_readiness_gauge_per_role() -> None:
    health = metrics.Health("recorder")
    health.set_ready(True)
    assert metrics.READY.labels(role="recorder")._value.get() == 1
    health.set_ready(False, "broker connection lost")
    assert metrics.READY.labels(role="recorder")._value.get() == 0


def test_lag_is_clamped_and_skipped_without_a_timestamp() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert metrics.observe_lag("pagewire.jobs", None) is None
    # AMQP timestamps are whole seconds and clocks drift: a "future" publish counts as no wait.
    assert metrics.observe_lag("pagewire.jobs", now + timedelta(seconds=2), now=now) == 0.0
    # aiormq hands back naive datetimes in UTC.
    assert metrics.observe_lag("pagewire.jobs", datetime(2029, 12, 31, 23, 59, 50), now=now) == 10.0


def test_job_duration_and_in_flight() -> None:
    before = metrics.JOB_SECONDS.labels(status="completed")._sum.get()
    created = datetime(2030, 1, 1, tzinfo=UTC)
    metrics.observe_job("completed", created, created + timedelta(seconds=42))
    assert metrics.JOB_SECONDS.labels(status="completed")._sum.get() == before + 42
    metrics.observe_job("failed", None)  # counted, no duration

    gauge = metrics.IN_FLIGHT.labels(queue="pagewire.tasks")
    with metrics.in_flight("pagewire.tasks"):
        assert gauge._value.get() == 1
    assert gauge._value.get() == 0


def test_log_context_tags_records() -> None:
    # Given a handler with the filter
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(logs.LogContextFilter())
    logger = logging.getLogger("test.metrics.context")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        # When a line is logged inside and outside a job's context
        with logs.log_context(job_id="j1", page_no=3):
            logger.info("reading")
        logger.info("idle")
    finally:
        logger.removeHandler(handler)

    # Then the first carries the job and page, the second neither
    assert (records[0].job_id, records[0].page) == ("j1", 3)  # type: ignore[attr-defined]
    assert (records[1].job_id, records[1].page) == (None, None)  # type: ignore[attr-defined]


async def test_a_port_in_use_is_a_setting_to_change_not_a_service_to_reach() -> None:
    # Given a port another process (here: another server) already listens on
    holder = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = holder.sockets[0].getsockname()[1]
    try:
        # When a role's metrics server asks for it, then the error names the port and the setting
        with pytest.raises(ConfigurationError, match=rf"127\.0\.0\.1:{port} is in use.*PAGEWIRE_METRICS_PORT"):
            async with metrics.serving(port, metrics.Health("planner"), "127.0.0.1"):
                pass
    finally:
        holder.close()
        await holder.wait_closed()


def test_the_command_says_so_in_one_line_and_exits_with_the_usage_code() -> None:
    # Given a port in use and a planner asked to serve its metrics there
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {**os.environ, "PAGEWIRE_METRICS_PORT": str(port), "PAGEWIRE_METRICS_HOST": "127.0.0.1"}
        # When it starts, then it stops at once with one line that names the port and the variable
        done = subprocess.run(
            [sys.executable, "-m", "pagewire", "planner"], env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("pagewire:")]
    assert lines == [
        f"pagewire: the metrics port 127.0.0.1:{port} is in use by another process: give this planner its"
        " own with PAGEWIRE_METRICS_PORT (0 turns metrics off)"
    ]


def test_a_plain_log_line_cannot_be_forged_by_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure_logging("INFO", "text")
    try:
        logging.getLogger("pagewire.test").warning("refused %s", "name\r\nFAKE ERROR line")
    finally:
        logging.basicConfig(force=True)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "name\\r\\nFAKE ERROR line" in err
