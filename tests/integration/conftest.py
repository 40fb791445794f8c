"""Real servers for the integration tests: RabbitMQ, PostgreSQL and an S3 server.

Where a Docker engine answers, RabbitMQ and PostgreSQL run in testcontainers;
elsewhere the machine's own services are used (started if they are down).
SeaweedFS always runs locally on a free port in a temporary directory. Every
session gets a fresh database and every test a fresh broker prefix, both
removed afterwards, so runs and tests never see each other's state.

``PAGEWIRE_TEST_SERVICES=local`` (or ``containers``) forces the choice.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from adapters import database
from schemas.names import Topology
from schemas.settings import Settings
from tests.integration.stack import ROLES, MakeStack, Stack
from tools import devstack

LOCAL_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
LOCAL_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
# The versions the CI machines run (INFRA.md), so both modes behave alike.
RABBITMQ_IMAGE = "rabbitmq:3.10"
POSTGRES_IMAGE = "postgres:15"
TEST_ACCESS_KEY = "pagewire-test"
TEST_SECRET_KEY = "pagewire-test-secret"
TEST_BUCKET = "pagewire-test"


@dataclass(frozen=True)
class Servers:
    """The broker and database server, before any database of ours exists."""

    amqp_url: str
    postgres_url: str  # SQLAlchemy URL of the server's ``postgres`` database


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint with one bucket and one identity."""

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    pid: int


@dataclass(frozen=True)
class Services:
    """Everything an integration test needs to reach; the database is migrated and empty."""

    amqp_url: str
    database_url: str  # postgresql+asyncpg://...
    s3_endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str

    def env(self, prefix: str) -> dict[str, str]:
        """The ``PAGEWIRE_*`` variables for a process using these services under ``prefix``."""
        return {
            "PAGEWIRE_AMQP_URL": self.amqp_url,
            "PAGEWIRE_DATABASE_URL": self.database_url,
            "PAGEWIRE_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "PAGEWIRE_S3_REGION": "us-east-1",
            "PAGEWIRE_S3_BUCKET": self.bucket,
            "PAGEWIRE_S3_ACCESS_KEY_ID": self.access_key,
            "PAGEWIRE_S3_SECRET_ACCESS_KEY": self.secret_key,
            "PAGEWIRE_PREFIX": prefix,
        }


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # no client, no socket, no engine: all mean "use the local services"
        return False


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """RabbitMQ and PostgreSQL: containers where Docker answers, the machine's services otherwise."""
    mode = os.environ.get("PAGEWIRE_TEST_SERVICES", "auto")
    if mode == "containers" or (mode == "auto" and _docker_answers()):
        from testcontainers.postgres import PostgresContainer
        from testcontainers.rabbitmq import RabbitMqContainer

        with (
            RabbitMqContainer(RABBITMQ_IMAGE) as rabbit,
            PostgresContainer(POSTGRES_IMAGE, driver="asyncpg") as postgres,
        ):
            host = rabbit.get_container_host_ip()
            port = rabbit.get_exposed_port(5672)
            url = make_url(postgres.get_connection_url()).set(database="postgres")
            yield Servers(
                amqp_url=f"amqp://guest:guest@{host}:{port}/",
                postgres_url=url.render_as_string(hide_password=False),
            )
        return
    devstack.ensure_postgres()
    devstack.ensure_rabbitmq()
    yield Servers(amqp_url=LOCAL_AMQP_URL, postgres_url=LOCAL_POSTGRES_URL)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS on a free loopback port in a temporary directory, stopped at the end of the session."""
    port = devstack.free_port()
    state_dir = tmp_path_factory.mktemp("seaweedfs")
    pid = devstack.start_seaweedfs(state_dir, port, TEST_ACCESS_KEY, TEST_SECRET_KEY, TEST_BUCKET)
    try:
        yield S3Server(f"http://127.0.0.1:{port}", TEST_BUCKET, TEST_ACCESS_KEY, TEST_SECRET_KEY, pid)
    finally:
        devstack.stop_pid(pid)


@pytest.fixture(scope="session")
def services(servers: Servers, s3_server: S3Server) -> Iterator[Services]:
    """All three servers, with a fresh migrated database ``pagewire_test_<hex>`` dropped at the end."""
    from adapters.database import upgrade

    database_url = (
        make_url(servers.postgres_url)
        .set(database=f"pagewire_test_{secrets.token_hex(4)}")
        .render_as_string(hide_password=False)
    )
    database.ensure_database(database_url)
    try:
        upgrade(database_url)
        yield Services(
            amqp_url=servers.amqp_url,
            database_url=database_url,
            s3_endpoint_url=s3_server.endpoint_url,
            bucket=s3_server.bucket,
            access_key=s3_server.access_key,
            secret_key=s3_server.secret_key,
        )
    finally:
        database.drop_database(database_url)


@pytest.fixture
def pagewire_env(services: Services) -> Iterator[dict[str, str]]:
    """``PAGEWIRE_*`` variables for one test, with a prefix of its own; its queues and exchanges go afterwards.

    Pass it as ``env=`` to subprocesses, or use ``pagewire_settings`` in-process.
    """
    prefix = f"t{secrets.token_hex(6)}"
    yield services.env(prefix)
    devstack.delete_topology(services.amqp_url, Topology(prefix=prefix))


@pytest.fixture
def pagewire_settings(pagewire_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """``Settings`` for this test's services and prefix.

    The variables are also set in this process's environment for the test, so
    the role settings classes (``WorkerSettings()`` and the rest) see them too.
    """
    for name in list(os.environ):
        if name.startswith("PAGEWIRE_") and name != "PAGEWIRE_CORPUS_DIR":
            monkeypatch.delenv(name)  # a developer's shell must not leak into tests
    for name, value in pagewire_env.items():
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.fixture
def make_stack(services: Services, tmp_path: Path) -> Iterator[MakeStack]:
    """Role stacks for one test, each on a fresh prefix: ``make_stack(roles=..., role_env=..., **PAGEWIRE_VARS)``.

    The ``roles`` (default: planner, worker, recorder) are started and awaited;
    pass ``roles=()`` to start them by hand. Every stack is stopped and its
    queues deleted when the test ends.
    """
    made: list[Stack] = []

    def make(
        *, roles: tuple[str, ...] = ROLES, role_env: dict[str, dict[str, str]] | None = None, **variables: str
    ) -> Stack:
        env = services.env(f"t{secrets.token_hex(6)}") | {"PAGEWIRE_RETRY_BACKOFF_S": "0.2"} | variables
        stack = Stack(env, tmp_path / f"stack-{len(made)}")
        made.append(stack)
        if roles:
            stack.start_roles(roles, role_env)
        return stack

    yield make
    for stack in made:
        stack.stop_all()
        devstack.delete_topology(services.amqp_url, stack.topology)


@pytest.fixture
async def db(services: Services) -> AsyncIterator[AsyncEngine]:
    """An engine on the test database, for reading the rows a user would query."""
    engine = create_async_engine(services.database_url)
    yield engine
    await engine.dispose()
