"""Shared fixtures. Integration tests get the real local stack, started here when needed.

The test session runs its own stack under `.fleetpulse/test/` on its own ports, so it never
disturbs a demo stack running from the same checkout. It is stopped at the end of the session
if the session started it (set FLEETPULSE_TEST_KEEP_STACK=1 to keep it for faster re-runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

ROOT = Path(__file__).resolve().parents[1]
# FLEETPULSE_TEST_STACK=N (1-9) gives a second checkout or a parallel run a stack of its own:
# home .fleetpulse/test-N, every port moved up by N*100.
_STACK_N = int(os.environ.get("FLEETPULSE_TEST_STACK", "0") or 0)
_HOME = "test" if _STACK_N == 0 else f"test-{_STACK_N}"
TEST_ENV = {
    "FLEETPULSE_HOME": str(ROOT / ".fleetpulse" / _HOME),
    "FLEETPULSE_KAFKA_BOOTSTRAP": f"127.0.0.1:{29092 + _STACK_N * 100}",
    "FLEETPULSE_KAFKA_CONTROLLER_PORT": str(29093 + _STACK_N * 100),
    "FLEETPULSE_KAFKA_INTERNAL_PORT": str(29096 + _STACK_N * 100),
    # Tests read and write topics of their own, and start services on them: as `admin`. What
    # each service's own user may do is tested on the real topics
    # (tests/infra/stack/test_kafka_security.py), and the demo test runs every child as its own.
    "FLEETPULSE_KAFKA_SASL_USERNAME": "admin",
    # A listener for clients behind a proxy a test starts and stops (tests/e2e/test_outage.py).
    "FLEETPULSE_KAFKA_PROXIED_PORT": str(29094 + _STACK_N * 100),
    "FLEETPULSE_KAFKA_PROXY_PORT": str(29095 + _STACK_N * 100),
    "FLEETPULSE_PG_PORT": str(55442 + _STACK_N * 100),
    # The monitoring, when a test turns it on (tests/infra/stack/test_monitoring.py).
    "FLEETPULSE_PROMETHEUS_PORT": str(29090 + _STACK_N * 100),
    "FLEETPULSE_POSTGRES_EXPORTER_PORT": str(29187 + _STACK_N * 100),
    "FLEETPULSE_ALERTMANAGER_PORT": str(29193 + _STACK_N * 100),
    "FLEETPULSE_KAFKA_JMX_PORT": str(29181 + _STACK_N * 100),
    "FLEETPULSE_PG_STORAGE": "auto",
    "FLEETPULSE_PG_SSLMODE": "verify-full",
    # Services started by tests serve no /metrics unless a test asks for it on a port of its
    # own (the defaults would collide between the workers one test starts).
    "FLEETPULSE_METRICS_PORT": "0",
}
os.environ.update(TEST_ENV)


from infra import stack  # noqa: E402 - settings read the environment set above
from infra.db import migrate  # noqa: E402
from infra.settings import StackSettings  # noqa: E402
from infra.stack import PostgresCluster  # noqa: E402
from infra.stack.process import free_port  # noqa: E402
from runtime.settings import KafkaSettings  # noqa: E402
from runtime.topics import create_topics  # noqa: E402
from schemas.topics import TopicSpec  # noqa: E402
from tests.containers import container_services, docker_requested  # noqa: E402


@pytest.fixture(scope="session")
def stack_settings() -> Iterator[StackSettings]:
    """The running local stack (Kafka + PostgreSQL over TLS), migrated, topics created."""
    settings = StackSettings()
    results = stack.up(settings)  # a service that cannot start fails the test, never skips it
    started_here = any(started for _, started in results)
    _prepare(settings)
    yield settings
    if started_here and not os.environ.get("FLEETPULSE_TEST_KEEP_STACK"):
        stack.down(settings)


@pytest.fixture(scope="session")
def service_settings(request: pytest.FixtureRequest) -> Iterator[StackSettings]:
    """Where the service tests find Kafka and PostgreSQL: the local stack, or containers
    when FLEETPULSE_TEST_DOCKER=1 (see tests/containers.py)."""
    if not docker_requested():
        yield request.getfixturevalue("stack_settings")
        return
    with container_services() as env:
        os.environ.update(env)
        settings = StackSettings()
        _prepare(settings)
        yield settings


def _prepare(settings: StackSettings) -> None:
    asyncio.run(create_topics(settings))

    async def _migrate() -> None:
        conn = await asyncpg.connect(**settings.connect_kwargs())
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(_migrate())


@pytest.fixture
def kafka_bootstrap(service_settings: StackSettings) -> str:
    return service_settings.kafka_bootstrap


@pytest.fixture
async def new_topic(kafka_bootstrap: str) -> AsyncIterator[TopicSpec]:
    """A topic of its own for one test: 3 partitions, named test.<random>."""
    spec = TopicSpec(name=f"test.{uuid.uuid4().hex[:12]}", partitions=3, retention_ms=3_600_000)
    await create_topics(KafkaSettings(kafka_bootstrap=kafka_bootstrap), [spec])
    yield spec


async def superuser_connect(
    settings: StackSettings, database: str = "postgres"
) -> asyncpg.Connection:
    """The cluster's superuser, over the local socket (root or the cluster's own user only)."""
    return await PostgresCluster(settings).superuser_connect(database)


@contextlib.asynccontextmanager
async def _scratch_database(settings: StackSettings) -> AsyncIterator[str]:
    """An empty database owned by the database's owner role, dropped after the block."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await superuser_connect(settings)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" OWNER "{settings.pg_user}"')
    finally:
        await admin.close()
    yield name
    # A new connection: a test may have restarted the server meanwhile.
    admin = await superuser_connect(settings)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def fresh_database(service_settings: StackSettings) -> AsyncIterator[str]:
    """An empty database owned by the owner role, dropped after the test."""
    async with _scratch_database(service_settings) as name:
        yield name


@pytest.fixture
async def stack_database(stack_settings: StackSettings) -> AsyncIterator[str]:
    """A database of the local stack, migrated by the owner (plain PostgreSQL partitions),
    dropped after the test: for tests of the services' login roles, which the local stack
    makes (a container has none)."""
    async with _scratch_database(stack_settings) as name:
        conn = await asyncpg.connect(**stack_settings.connect_kwargs(database=name))
        try:
            await migrate(conn, storage="postgres")
        finally:
            await conn.close()
        yield name


@pytest.fixture
async def app_conn(
    stack_settings: StackSettings, fresh_database: str
) -> AsyncIterator[asyncpg.Connection]:
    """A TLS connection (verify-full) as the owner role to a fresh database."""
    conn = await asyncpg.connect(**stack_settings.connect_kwargs(database=fresh_database))
    try:
        yield conn
    finally:
        await conn.close()


PGLITE = ROOT / "infra" / "pglite"


@pytest.fixture(scope="module")
def standin() -> Iterator[int]:
    """Start the stand-in on a free port; yield the port."""
    if not (PGLITE / "node_modules").exists():
        pytest.fail("infra/pglite/node_modules is missing: run `make test` (it runs npm ci)")
    port = free_port()
    proc = subprocess.Popen(
        ["node", "server.mjs", "--host", "127.0.0.1", "--port", str(port)],
        cwd=PGLITE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until `ready host:port` (or exit)
        if not line.startswith("ready"):
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"the TimescaleDB stand-in did not start: {line!r} {err[-2000:]}")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
async def ts_conn(standin: int) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=standin,
        user="postgres",
        password="postgres",  # the stand-in's fixed test credentials
        database="postgres",
        ssl=False,
        timeout=60,
    )
    try:
        yield conn
    finally:
        conn.terminate()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No FLEETPULSE_* variable (the test stack's or the shell's): settings see their defaults."""
    for name in [n for n in os.environ if n.startswith("FLEETPULSE_")]:
        monkeypatch.delenv(name)
    return monkeypatch
