"""Integration: the status consumer between the real broker and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import REGISTRY

from infra.db import migrate
from infra.settings import StackSettings
from infra.stack.process import free_port
from registry.status import StatusConsumer, apply_status
from schemas.messages import ServerState, ServerStatusChange
from schemas.topics import TopicSpec
from tests.e2e.relay import Relay
from tests.factories import registry_settings
from tests.kafka import SECURITY

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def change(server_id: str, state: ServerState, at: datetime) -> ServerStatusChange:
    return ServerStatusChange(
        server_id=server_id, status=state, last_event_at=at - timedelta(seconds=1), changed_at=at
    )


async def add_server(conn: asyncpg.Connection) -> str:
    server_id = str(uuid.uuid4())
    await conn.execute(
        "INSERT INTO servers (id, name, hostname, port, username, encrypted_password) "
        "VALUES ($1, 'n', $2, 22, 'u', 'v1:x')",
        server_id,
        f"h-{server_id}",
    )
    return server_id


@pytest.fixture
async def conn(app_conn: asyncpg.Connection) -> asyncpg.Connection:
    await migrate(app_conn)
    return app_conn


@pytest.fixture
async def pool(
    stack_settings: StackSettings, fresh_database: str, conn: asyncpg.Connection
) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(
        **stack_settings.connect_kwargs(database=fresh_database), min_size=1, max_size=4
    )
    yield pool
    await pool.close()


async def _state(conn: asyncpg.Connection, server_id: str) -> tuple[bool, datetime]:
    row = await conn.fetchrow(
        "SELECT is_online, last_seen_at FROM servers WHERE id = $1", server_id
    )
    assert row is not None
    return row["is_online"], row["last_seen_at"]


async def test_only_newer_changes_of_known_servers_apply(conn: asyncpg.Connection) -> None:
    sid = await add_server(conn)
    assert await apply_status(conn, change(sid, ServerState.ONLINE, T0))
    # Replayed or older: ignored.
    assert not await apply_status(conn, change(sid, ServerState.ONLINE, T0))
    assert not await apply_status(conn, change(sid, ServerState.OFFLINE, T0 - timedelta(minutes=1)))
    assert not await apply_status(conn, change(str(uuid.uuid4()), ServerState.ONLINE, T0))
    assert await _state(conn, sid) == (True, T0 - timedelta(seconds=1))
    assert await apply_status(conn, change(sid, ServerState.OFFLINE, T0 + timedelta(minutes=1)))
    assert await _state(conn, sid) == (False, T0 + timedelta(seconds=59))
    # Every change is in the history once (the replay too, the older one too), by event time;
    # an unknown server's nowhere.
    history = await conn.fetch(
        "SELECT server_id, event_at, online FROM server_status_history ORDER BY changed_at"
    )
    assert [(r["server_id"], r["event_at"], r["online"]) for r in history] == [
        (sid, T0 - timedelta(minutes=1, seconds=1), False),
        (sid, T0 - timedelta(seconds=1), True),
        (sid, T0 + timedelta(seconds=59), False),
    ]


async def test_consumer_keeps_is_online_current_from_the_real_broker(
    stack_settings: StackSettings,
    fresh_database: str,
    conn: asyncpg.Connection,
    pool: asyncpg.Pool,
    new_topic: TopicSpec,
) -> None:
    settings = registry_settings(
        stack_settings,
        fresh_database,
        status_topic=new_topic.name,
        registry_group=f"test-registry-{uuid.uuid4().hex[:8]}",
        registry_consume_status=True,
    )
    online, offline = await add_server(conn), await add_server(conn)

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", **SECURITY)
    await producer.start()
    try:
        sends = [
            (online, change(online, ServerState.ONLINE, T0).to_json_bytes()),
            (online, b"{not json"),
            (online, b'{"server_id": "x", "status": "sideways"}'),
            (str(uuid.uuid4()), change(str(uuid.uuid4()), ServerState.ONLINE, T0).to_json_bytes()),
            (offline, change(offline, ServerState.ONLINE, T0).to_json_bytes()),
            (
                offline,
                change(offline, ServerState.OFFLINE, T0 + timedelta(seconds=30)).to_json_bytes(),
            ),
            # Out of order: older than what was applied; ignored.
            (
                offline,
                change(offline, ServerState.ONLINE, T0 + timedelta(seconds=10)).to_json_bytes(),
            ),
        ]
        for key, value in sends:
            await producer.send_and_wait(new_topic.name, value, key=key.encode())
    finally:
        await producer.stop()

    consumer = StatusConsumer(settings, pool)
    task = asyncio.create_task(consumer.run())
    try:
        for _ in range(300):
            if consumer.applied + consumer.skipped >= len(sends):
                break
            await asyncio.sleep(0.1)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 15)
    assert (consumer.applied, consumer.skipped) == (3, 4)
    assert REGISTRY.get_sample_value("fleetpulse_registry_lag") == 0
    rows = {r["id"]: r for r in await pool.fetch("SELECT id, is_online, last_seen_at FROM servers")}
    assert rows[online]["is_online"] is True
    assert rows[offline]["is_online"] is False
    assert rows[offline]["last_seen_at"] == T0 + timedelta(seconds=29)

    # Offsets were committed after the database writes: a restart reads nothing again.
    check = AIOKafkaConsumer(
        **SECURITY, bootstrap_servers=settings.kafka_bootstrap, group_id=settings.registry_group
    )
    await check.start()
    try:
        committed = 0
        for p in range(new_topic.partitions):
            with contextlib.suppress(TypeError):
                committed += await check.committed(TopicPartition(new_topic.name, p)) or 0
        assert committed == len(sends)
    finally:
        await check.stop()


async def test_consumer_waits_for_an_unreachable_broker_and_stops_on_request(
    stack_settings: StackSettings, fresh_database: str, pool: asyncpg.Pool
) -> None:
    settings = registry_settings(
        stack_settings, fresh_database, kafka_bootstrap="127.0.0.1:1", retry_max=0.5
    )
    consumer = StatusConsumer(settings, pool)
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(2)
    assert not task.done()
    consumer.stop()
    await asyncio.wait_for(task, 15)


async def test_a_batch_that_met_a_database_outage_is_applied_when_it_is_back(
    stack_settings: StackSettings,
    fresh_database: str,
    conn: asyncpg.Connection,
    new_topic: TopicSpec,
) -> None:
    # The consumer reaches the database through a relay the test cuts.
    relay = Relay(free_port(), stack_settings.pg_port)
    await relay.start()
    settings = registry_settings(
        stack_settings,
        fresh_database,
        pg_port=relay.port,
        status_topic=new_topic.name,
        registry_group=f"test-registry-{uuid.uuid4().hex[:8]}",
        retry_min=0.1,
        retry_max=0.5,
    )
    relayed = await asyncpg.create_pool(**settings.connect_kwargs(), min_size=1, max_size=2)
    server_id = await add_server(conn)
    await relay.cut()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", **SECURITY)
    await producer.start()
    try:
        value = change(server_id, ServerState.ONLINE, T0).to_json_bytes()
        await producer.send_and_wait(new_topic.name, value, key=server_id.encode())
    finally:
        await producer.stop()

    def errors() -> float:
        value = REGISTRY.get_sample_value("fleetpulse_registry_errors_total", {"kind": "postgres"})
        return value or 0.0

    before = errors()
    consumer = StatusConsumer(settings, relayed)
    task = asyncio.create_task(consumer.run())
    try:
        for _ in range(300):  # the change is read, and the database is away
            if errors() > before:
                break
            await asyncio.sleep(0.1)
        assert errors() > before and consumer.applied == 0
        await relay.restore()
        for _ in range(300):
            if consumer.applied:
                break
            await asyncio.sleep(0.1)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 15)
        await relayed.close()
        await relay.close()
    assert consumer.applied == 1
    assert (await _state(conn, server_id))[0] is True
