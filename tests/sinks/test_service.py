"""Integration: the sink between the real Kafka broker and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from infra.db import migrate
from infra.settings import StackSettings
from infra.stack import PostgresCluster
from runtime.topics import create_topics
from schemas import AGG_5S, DeadLetter, DeadLetterReason, Resolution, WindowAggregate
from schemas.topics import TopicSpec
from sinks import Sink, SinkSettings
from tests.conftest import ROOT
from tests.factories import ROW_T0 as T0
from tests.factories import add_server, aggregate, event_dict
from tests.kafka import SECURITY

pytestmark = pytest.mark.integration


@dataclass
class Rig:
    settings: SinkSettings
    conn: asyncpg.Connection
    topics: dict[Resolution, str]
    dlq: str
    servers: list[str]

    def sink(self, **settings: object) -> Sink:
        # Topics and tables: the settings' (the rig's topics, by resolution).
        return Sink(self.settings.model_copy(update=settings), dlq_topic=self.dlq)

    async def produce(self, aggs: list[WindowAggregate], raw: list[bytes] | None = None) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            **SECURITY,
        )
        await producer.start()
        try:
            for a in aggs:
                await producer.send(
                    self.topics[a.resolution], a.to_json_bytes(), key=a.server_id.encode()
                )
            for value in raw or []:
                await producer.send(self.topics[Resolution.FIVE_SECONDS], value, key=b"junk")
            await producer.flush()
        finally:
            await producer.stop()

    async def produce_raw(self, topic: str, values: list[bytes]) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap, acks="all", **SECURITY
        )
        await producer.start()
        try:
            for value in values:
                await producer.send(topic, value)
            await producer.flush()
        finally:
            await producer.stop()

    async def dead_letters(self, expect: int) -> list[DeadLetter]:
        consumer = AIOKafkaConsumer(
            self.dlq,
            bootstrap_servers=self.settings.kafka_bootstrap,
            auto_offset_reset="earliest",
            **SECURITY,
        )
        await consumer.start()
        got: list[DeadLetter] = []
        try:
            async with asyncio.timeout(30):
                while len(got) < expect:
                    batch = await consumer.getmany(timeout_ms=500)
                    got += [
                        DeadLetter.model_validate_json(r.value)
                        for records in batch.values()
                        for r in records
                    ]
            await asyncio.sleep(1)
            batch = await consumer.getmany(timeout_ms=500)
            got += [DeadLetter.model_validate_json(r.value) for rs in batch.values() for r in rs]
        finally:
            await consumer.stop()
        return got


@pytest.fixture
async def rig(
    service_settings: StackSettings, fresh_database: str, app_conn: asyncpg.Connection
) -> AsyncIterator[Rig]:
    await migrate(app_conn, storage="postgres")
    servers = [str(uuid.uuid4()) for _ in range(3)]
    for sid in servers:
        await add_server(app_conn, sid)
    suffix = uuid.uuid4().hex[:10]
    topics = {
        Resolution.FIVE_SECONDS: f"test.agg5s.{suffix}",
        Resolution.ONE_HOUR: f"test.agg1h.{suffix}",
        Resolution.ONE_DAY: f"test.agg1d.{suffix}",
    }
    dlq = f"test.dlq.{suffix}"
    await create_topics(
        service_settings,
        [TopicSpec(t, 4, 3_600_000) for t in [*topics.values(), dlq]],
    )
    settings = SinkSettings(
        kafka_bootstrap=service_settings.kafka_bootstrap,
        pg_host=service_settings.pg_host,
        pg_port=service_settings.pg_port,
        pg_database=fresh_database,
        pg_sslmode=service_settings.pg_sslmode,
        sink_group=f"test-sink-{suffix}",
        agg_topics=dict(topics),
        batch_age_ms=200,
        retry_min=0.2,
        retry_max=2.0,
    )
    yield Rig(settings, app_conn, topics, dlq, servers)


@contextlib.asynccontextmanager
async def running(sink: Sink) -> AsyncIterator[asyncio.Task[None]]:
    """The sink started and running for the block; stopped, flushed and closed after it."""
    await sink.start()
    task = asyncio.create_task(sink.run())
    try:
        yield task
    finally:
        sink.stop()
        await task
        await sink.close()


async def run_until(sink: Sink, done: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:
    async with running(sink) as task, asyncio.timeout(timeout):
        while not await done():
            if task.done():
                task.result()
            await asyncio.sleep(0.2)


async def count(conn: asyncpg.Connection, table: str) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))


async def until_rows(conn: asyncpg.Connection, n: int, timeout: float, every: float) -> None:
    """Wait until `metrics_snapshots` holds `n` rows (TimeoutError after `timeout` s)."""
    async with asyncio.timeout(timeout):
        while True:
            if await count(conn, "metrics_snapshots") >= n:
                return
            await asyncio.sleep(every)


async def test_aggregates_in_exact_rows_out(rig: Rig) -> None:
    sid = rig.servers[0]
    fives = [
        aggregate(sid, T0 + timedelta(seconds=5 * i), cpu=10 + i, rx=100 * i) for i in range(12)
    ]
    hour = aggregate(sid, T0, Resolution.ONE_HOUR, count=3600, cpu=33.5, rx=10**9)
    day = aggregate(sid, T0.replace(hour=0), Resolution.ONE_DAY, count=86400, cpu=20.25)
    await rig.produce([*fives, hour, day])

    async def all_in() -> bool:
        return (
            await count(rig.conn, "metrics_snapshots") == 12
            and await count(rig.conn, "metrics_hourly") == 1
            and await count(rig.conn, "metrics_daily") == 1
        )

    await run_until(rig.sink(), all_in)
    rows = await rig.conn.fetch(
        'SELECT * FROM metrics_snapshots WHERE server_id = $1 ORDER BY "timestamp"', sid
    )
    assert [r["timestamp"] for r in rows] == [a.window_start for a in fives]
    first = rows[3]
    assert (first["cpu_usage"], first["cpu_usage_min"], first["cpu_usage_max"]) == (
        13.0,
        12.0,
        14.0,
    )
    assert (first["memory_usage"], first["disk_usage"], first["sample_count"]) == (40.0, 70.0, 5)
    assert (first["network_rx"], first["network_tx"]) == (300, 500)
    assert json.loads(first["processes"]) == [
        {"pid": 1, "name": "init", "cpu_usage": 0.5, "memory_usage": 0.1}
    ]
    h = await rig.conn.fetchrow("SELECT * FROM metrics_hourly")
    assert h is not None
    assert (h["bucket"], h["sample_count"], h["cpu_usage_avg"], h["network_rx"]) == (
        T0,
        3600,
        33.5,
        10**9,
    )
    d = await rig.conn.fetchrow("SELECT * FROM metrics_daily")
    assert d is not None and (d["bucket"], d["cpu_usage_avg"]) == (T0.replace(hour=0), 20.25)


async def test_a_caught_up_sink_writes_at_once_not_after_the_batch_age(rig: Rig) -> None:
    """With nothing more to read, waiting for the batch to fill or age only adds delay."""
    rig.settings = rig.settings.model_copy(update={"batch_age_ms": 120_000})
    sid = rig.servers[2]
    await rig.produce([aggregate(sid, T0 + timedelta(seconds=5 * i)) for i in range(3)])
    started = time.monotonic()
    landed_after: list[float] = []

    async def landed() -> bool:
        if await count(rig.conn, "metrics_snapshots") == 3:
            landed_after.append(time.monotonic() - started)
        return bool(landed_after)

    await run_until(rig.sink(), landed, timeout=60)
    assert landed_after[0] < 20  # far less than the 120 s batch age
    assert time.monotonic() - started < 40  # and it stopped promptly


async def test_delivered_twice_no_duplicates_no_changes(rig: Rig) -> None:
    sid = rig.servers[1]
    aggs = [aggregate(sid, T0 + timedelta(seconds=5 * i), cpu=1.5 * i) for i in range(20)]
    await rig.produce(aggs)
    await rig.produce(aggs)  # a stream worker restarted and emitted them again

    async def settled() -> bool:
        return await count(rig.conn, "metrics_snapshots") == 20

    await run_until(rig.sink(), settled)
    before = await rig.conn.fetch('SELECT * FROM metrics_snapshots ORDER BY "timestamp"')
    # A second sink group reads everything again from the beginning: nothing changes.
    rig.settings = rig.settings.model_copy(update={"sink_group": rig.settings.sink_group + "-2"})
    sink = rig.sink()

    async def reread() -> bool:
        return sink.rows_written >= 40

    await run_until(sink, reread)
    after = await rig.conn.fetch('SELECT * FROM metrics_snapshots ORDER BY "timestamp"')
    assert [dict(r) for r in after] == [dict(r) for r in before]
    assert len(after) == 20


async def test_a_correction_replaces_its_row_and_an_earlier_revision_does_not(rig: Rig) -> None:
    """The stream re-emits a window a late sample corrected (revision 1, one sample more);
    after a replay it may send revision 0 again before revision 1: the row keeps the most
    samples in the end, and at no point goes back to fewer."""
    sid = rig.servers[1]
    first = aggregate(sid, T0, count=4, cpu=10.0)
    corrected = aggregate(sid, T0, count=5, cpu=26.0).model_copy(update={"revision": 1})
    hour = aggregate(sid, T0.replace(minute=0), Resolution.ONE_HOUR, count=700, cpu=12.0)
    hour_corrected = hour.model_copy(update={"revision": 1, "count": 701})
    await rig.produce([first, hour, corrected, hour_corrected, first, hour])

    async def settled() -> bool:
        row = await rig.conn.fetchrow(
            "SELECT sample_count FROM metrics_hourly WHERE server_id = $1", sid
        )
        return await count(rig.conn, "metrics_snapshots") == 1 and row is not None

    await run_until(rig.sink(), settled)
    snap = await rig.conn.fetchrow(
        "SELECT sample_count, cpu_usage FROM metrics_snapshots WHERE server_id = $1", sid
    )
    assert snap is not None and (snap["sample_count"], snap["cpu_usage"]) == (5, 26.0)
    hourly = await rig.conn.fetchval(
        "SELECT sample_count FROM metrics_hourly WHERE server_id = $1", sid
    )
    assert hourly == 701


async def test_unknown_server_and_junk_go_to_the_dlq_alone(rig: Rig) -> None:
    good, unknown = rig.servers[2], str(uuid.uuid4())
    aggs = [aggregate(good, T0 + timedelta(seconds=5 * i)) for i in range(30)]
    aggs.insert(17, aggregate(unknown, T0))
    await rig.produce(aggs, raw=[b"{not json", b'{"server_id": "x"}'])

    async def landed() -> bool:
        return await count(rig.conn, "metrics_snapshots") == 30

    sink = rig.sink()
    await run_until(sink, landed)
    letters = await rig.dead_letters(3)
    by_reason = {d.reason.value: d for d in letters}
    assert sorted(by_reason) == ["db_rejected", "invalid_json", "validation"]
    rejected = by_reason["db_rejected"]
    assert "ForeignKeyViolationError" in rejected.error and "23503" in rejected.error
    assert WindowAggregate.model_validate_json(rejected.payload()).server_id == unknown
    assert by_reason["invalid_json"].payload() == b"{not json"
    assert "server_id" in by_reason["validation"].error
    assert len(letters) == 3


@pytest.mark.parametrize("connections", [1, 3])
async def test_a_batch_split_over_connections_lands_whole_and_rejects_alone(
    rig: Rig, connections: int
) -> None:
    # Every known server on every partition lane; each lane gets its own unknown server's row.
    servers = [str(uuid.uuid4()) for _ in range(24)]
    for sid in servers:
        await add_server(rig.conn, sid)
    unknown = [str(uuid.uuid4()) for _ in range(4)]
    aggs = [aggregate(sid, T0 + timedelta(seconds=5 * i)) for sid in servers for i in range(10)]
    aggs += [aggregate(sid, T0) for sid in unknown]
    await rig.produce(aggs)

    async def landed() -> bool:
        return await count(rig.conn, "metrics_snapshots") == 240

    sink = rig.sink(write_connections=connections)
    await run_until(sink, landed)
    letters = await rig.dead_letters(4)
    assert sorted(WindowAggregate.model_validate_json(d.payload()).server_id for d in letters) == (
        sorted(unknown)
    )
    assert {d.reason.value for d in letters} == {"db_rejected"}
    assert sink.rows_written == 240 and sink.dead_letters == 4
    used = await rig.conn.fetchval(
        "SELECT count(DISTINCT server_id) FROM metrics_snapshots WHERE sample_count = 5"
    )
    assert used == 24


async def test_late_samples_in_the_dlq_are_counted_once_and_other_letters_read_past(
    rig: Rig,
) -> None:
    sid = rig.servers[0]
    late = [
        DeadLetter.for_payload(
            json.dumps(event_dict(server_id=sid, timestamp=f"2026-11-25T10:00:0{i}Z")).encode(),
            reason=DeadLetterReason.LATE,
            error="event is 4000 s behind its server's event time",
            component="stream",
            source_topic="metrics.raw.v1",
            source_partition=2,
            source_offset=1000 + i,
            key=sid.encode(),
        )
        for i in range(3)
    ]
    other = DeadLetter.for_payload(
        b"{not json",
        reason=DeadLetterReason.INVALID_JSON,
        error="not JSON",
        component="stream",
        source_topic="metrics.raw.v1",
        source_partition=2,
        source_offset=999,
    )
    # Each late letter twice (a producer's retry): counted once; junk is read past.
    await rig.produce_raw(
        rig.dlq, [*(d.to_json_bytes() for d in late * 2), other.to_json_bytes(), b"junk"]
    )
    await rig.produce([aggregate(sid, T0)])

    async def landed() -> bool:
        return (
            await count(rig.conn, "late_samples") == 3
            and await count(rig.conn, "metrics_snapshots") == 1
        )

    sink = rig.sink()
    await run_until(sink, landed)
    rows = await rig.conn.fetch("SELECT * FROM late_samples ORDER BY source_offset")
    assert [(r["source_partition"], r["source_offset"], r["server_id"]) for r in rows] == [
        (2, 1000, sid),
        (2, 1001, sid),
        (2, 1002, sid),
    ]
    assert rows[1]["timestamp"] == datetime(2026, 11, 25, 10, 0, 1, tzinfo=UTC)
    assert sink.dead_letters == 0  # nothing read from the DLQ goes back to it


async def test_postgres_restart_mid_stream_loses_nothing(
    rig: Rig, stack_settings: StackSettings
) -> None:
    sid = rig.servers[0]
    cluster = PostgresCluster(stack_settings)
    sink = rig.sink()
    async with running(sink):
        first = [aggregate(sid, T0 + timedelta(seconds=5 * i)) for i in range(50)]
        await rig.produce(first)
        await asyncio.sleep(1.5)
        await asyncio.to_thread(cluster.stop)
        second = [aggregate(sid, T0 + timedelta(seconds=5 * i)) for i in range(50, 150)]
        await rig.produce(second)  # arrives while the database is down
        await asyncio.sleep(3)
        await asyncio.to_thread(cluster.start)
        conn = await asyncpg.connect(**rig.settings.connect_kwargs())
        try:
            await until_rows(conn, 150, timeout=60, every=0.3)
            stamps = await conn.fetch(
                'SELECT "timestamp", count(*) AS n FROM metrics_snapshots GROUP BY 1'
            )
        finally:
            await conn.close()
    assert len(stamps) == 150 and {r["n"] for r in stamps} == {1}


async def test_sink_resumes_as_soon_as_the_database_is_back(
    rig: Rig, stack_settings: StackSettings
) -> None:
    """With a first retry delay of 8 s the sink would sit out the whole step; its probe sees
    PostgreSQL accept connections again and the held rows land within about a second."""
    sid = rig.servers[0]
    cluster = PostgresCluster(stack_settings)
    sink = rig.sink(retry_min=8.0, retry_max=30.0, retry_probe_every=0.25)
    async with running(sink):
        await asyncio.to_thread(cluster.stop)
        await rig.produce([aggregate(sid, T0 + timedelta(seconds=5 * i)) for i in range(20)])
        await asyncio.sleep(2)  # the sink has failed and is in its first 8 s delay
        await asyncio.to_thread(cluster.start)  # returns once connections are accepted
        back = time.monotonic()
        conn = await asyncpg.connect(**rig.settings.connect_kwargs())
        try:
            await until_rows(conn, 20, timeout=30, every=0.1)
            landed = time.monotonic() - back
        finally:
            await conn.close()
    assert landed < 4, f"rows landed {landed:.1f} s after the database was back"


async def test_sink_command_writes_and_stops_cleanly(stack_settings: StackSettings) -> None:
    sid = str(uuid.uuid4())
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    conn = await asyncpg.connect(**stack_settings.connect_kwargs())
    try:
        await add_server(conn, sid)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "infra.cli", "sink",
            env={**os.environ, "FLEETPULSE_SINK_GROUP": f"test-{sid[:8]}"},
            cwd=ROOT,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        producer = AIOKafkaProducer(
            bootstrap_servers=stack_settings.kafka_bootstrap, acks="all", **SECURITY
        )
        await producer.start()
        try:
            for i in range(6):
                agg = aggregate(sid, start + timedelta(seconds=5 * i), cpu=float(i))
                await producer.send_and_wait(AGG_5S.name, agg.to_json_bytes(), key=sid.encode())
        finally:
            await producer.stop()
        try:
            async with asyncio.timeout(60):
                while True:
                    n = await conn.fetchval(
                        "SELECT count(*) FROM metrics_snapshots WHERE server_id = $1", sid
                    )
                    if n == 6:
                        break
                    await asyncio.sleep(0.3)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode == 0, err
        assert b"sink stopped" in err
    finally:
        await conn.close()
