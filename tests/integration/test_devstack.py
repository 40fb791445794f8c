"""The local-stack building blocks against the real servers: SeaweedFS, PostgreSQL, RabbitMQ."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from adapters import database
from schemas.names import Topology
from tools import devstack


def test_seaweedfs_serves_objects_and_stops(tmp_path: Path) -> None:
    # Given SeaweedFS started on a free port
    port = devstack.free_port()
    pid = devstack.start_seaweedfs(tmp_path / "weed", port, "ak-test", "sk-test", "bucket-test")
    try:
        assert devstack.pid_alive(pid)
        assert port in devstack.listening_ports(pid)
        client = devstack.s3_client(f"http://127.0.0.1:{port}", "ak-test", "sk-test")

        # When an object is put and read back
        client.put_object(Bucket="bucket-test", Key="jobs/x/source.pdf", Body=b"%PDF-1.7 hello")
        body = client.get_object(Bucket="bucket-test", Key="jobs/x/source.pdf")["Body"].read()

        # Then it comes back unchanged, and the bucket was made at start
        assert body == b"%PDF-1.7 hello"
        assert "bucket-test" in [b["Name"] for b in client.list_buckets()["Buckets"]]
    finally:
        # When it is stopped, then the process is gone and the port is free again
        assert devstack.stop_pid(pid)
    assert not devstack.pid_alive(pid)
    assert not devstack.port_open("127.0.0.1", port)


def test_seaweedfs_rejects_other_keys(tmp_path: Path) -> None:
    port = devstack.free_port()
    pid = devstack.start_seaweedfs(tmp_path / "weed", port, "ak-test", "sk-test", "bucket-test")
    try:
        wrong = devstack.s3_client(f"http://127.0.0.1:{port}", "ak-test", "not-the-secret")
        try:
            wrong.list_buckets()
        except Exception as exc:
            assert "SignatureDoesNotMatch" in str(exc) or "AccessDenied" in str(exc)
        else:
            raise AssertionError("a wrong secret key was accepted")
    finally:
        devstack.stop_pid(pid)


def test_ensure_database_creates_then_finds(servers) -> None:
    # Given a database name nobody uses
    url = make_url(servers.postgres_url).set(database=f"pagewire_devstack_{secrets.token_hex(4)}")
    database_url = url.render_as_string(hide_password=False)
    try:
        # When it is ensured twice, then it is created once and found the second time
        assert database.ensure_database(database_url) is True
        assert database.ensure_database(database_url) is False
    finally:
        assert database.drop_database(database_url) is True
    assert database.drop_database(database_url) is False


def test_consumer_counts_and_delete_topology(servers) -> None:
    # Given a prefix whose jobs queue exists (with no consumer) and whose tasks queue does not
    topology = Topology(prefix=f"t{secrets.token_hex(6)}")
    _declare_queue(servers.amqp_url, topology.jobs_queue)
    try:
        # Then the counts tell the two apart
        counts = devstack.consumer_counts(servers.amqp_url, [topology.jobs_queue, topology.tasks_queue])
        assert counts == {topology.jobs_queue: 0, topology.tasks_queue: None}
    finally:
        # When the topology is deleted (missing parts included), then the queue is gone
        devstack.delete_topology(servers.amqp_url, topology)
    assert devstack.consumer_counts(servers.amqp_url, [topology.jobs_queue]) == {topology.jobs_queue: None}


def _declare_queue(amqp_url: str, name: str) -> None:
    import asyncio

    import aio_pika

    async def declare() -> None:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(name, durable=True)

    asyncio.run(declare())


def test_dev_env_without_state_comes_from_settings(tmp_path: Path) -> None:
    from schemas.settings import Settings

    env = devstack.dev_env(tmp_path, settings=Settings(prefix="devtest", s3_endpoint_url="http://127.0.0.1:1"))
    assert env["PAGEWIRE_PREFIX"] == "devtest"
    assert env["PAGEWIRE_S3_ENDPOINT_URL"] == "http://127.0.0.1:1"
    assert env["PAGEWIRE_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert env["PAGEWIRE_HTTP_NO_AUTH"] == "1"  # a gateway in a dev shell runs open rather than not at all


def test_fixtures_give_a_migrated_database_a_bucket_and_a_prefix(services, pagewire_env, pagewire_settings) -> None:
    import asyncpg  # type: ignore[import-untyped]

    # The session database is migrated: the status tables exist
    dsn = make_url(services.database_url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def tables() -> set[str]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {row["tablename"] for row in rows}
        finally:
            await conn.close()

    import asyncio

    assert {"jobs", "pages"} <= asyncio.run(tables())

    # The bucket answers with the test keys
    client = devstack.s3_client(services.s3_endpoint_url, services.access_key, services.secret_key)
    client.head_bucket(Bucket=services.bucket)

    # This test has its own prefix, and settings built from the same variables
    assert pagewire_env["PAGEWIRE_PREFIX"].startswith("t")
    assert pagewire_settings.prefix == pagewire_env["PAGEWIRE_PREFIX"]
    assert pagewire_settings.database_url.get_secret_value() == services.database_url


def test_dev_up_runs_as_many_workers_as_asked_and_down_stops_them_all(
    tmp_path: Path, pagewire_env: dict[str, str], pagewire_settings
) -> None:
    ports = [devstack.metrics_port(name) for name in ("planner", "worker", "worker-2", "recorder")]
    if any(devstack.port_open(devstack.LOOPBACK, port) for port in ports):
        pytest.skip("a dev stack of this machine holds the roles' metrics ports")
    tasks = pagewire_settings.topology.tasks_queue
    amqp_url = pagewire_env["PAGEWIRE_AMQP_URL"]
    try:
        # When the stack comes up with two workers
        devstack.dev_up(tmp_path, settings=pagewire_settings, base_env=pagewire_env, workers=2)

        # Then both consume the tasks queue, each with half the cores for OCR, and status shows them
        assert devstack.consumer_counts(amqp_url, [tasks]) == {tasks: 2}
        rows = {row.name: row for row in devstack.dev_status(tmp_path, settings=pagewire_settings)}
        assert rows["worker"].running and rows["worker-2"].running
        second = rows["worker-2"].pid
        assert second is not None
        environ = Path(f"/proc/{second}/environ").read_bytes().split(b"\0")
        assert f"PAGEWIRE_OCR_THREADS={devstack.ocr_threads_each(2)}".encode() in environ

        # When it is brought up again without a count: the two go on as they are
        devstack.dev_up(tmp_path, settings=pagewire_settings, base_env=pagewire_env)
        assert devstack.consumer_counts(amqp_url, [tasks]) == {tasks: 2}
        assert {row.name: row.pid for row in devstack.dev_status(tmp_path, settings=pagewire_settings)}[
            "worker-2"
        ] == second

        # When the first worker is gone and the stack is brought up again: the second worker's
        # consumer is not taken for another stack's, and the first comes back
        gone = rows["worker"].pid
        assert gone is not None
        devstack.stop_pid(gone)
        assert _consumers_become(amqp_url, tasks, 1)
        devstack.dev_up(tmp_path, settings=pagewire_settings, base_env=pagewire_env, workers=2)
        assert devstack.consumer_counts(amqp_url, [tasks]) == {tasks: 2}
        rows = {row.name: row for row in devstack.dev_status(tmp_path, settings=pagewire_settings)}
        assert rows["worker"].pid not in (None, gone) and rows["worker-2"].pid == second

        # When it is brought up again with one: the second stops, the first goes on
        first = rows["worker"].pid
        devstack.dev_up(tmp_path, settings=pagewire_settings, base_env=pagewire_env, workers=1)
        assert not devstack.pid_alive(second)
        assert _consumers_become(amqp_url, tasks, 1)
        assert {row.name: row.pid for row in devstack.dev_status(tmp_path, settings=pagewire_settings)}[
            "worker"
        ] == first
    finally:
        lines = devstack.dev_down(tmp_path)
    # Then down stops every role it started
    assert all(_consumers_become(amqp_url, q, 0) for q in (tasks, pagewire_settings.topology.jobs_queue))
    assert any(line.startswith("worker: stopped pid") for line in lines)


def _consumers_become(amqp_url: str, queue: str, count: int, within_s: float = 10.0) -> bool:
    """True once ``queue`` has ``count`` consumers (the broker drops a stopped one's as its connection closes)."""
    import time

    deadline = time.monotonic() + within_s
    while devstack.consumer_counts(amqp_url, [queue]) != {queue: count}:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
