"""End to end, scaled out: two stream workers and two sinks on the same topics share the
partitions, and `kill -9` of one of each under load loses no row and duplicates none.

Forty servers send one event-second each every 0.3 s, from 30 s before a midnight to 30 s
after it, and then one event at +200 s that closes, by event time, every 5 s window, the hour
and the day before midnight. The database must then hold exactly the reference windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from infra.settings import StackSettings
from tests.e2e.pipeline import PARTITIONS, Pipeline, register, running_pipeline, wait_for
from tests.kafka import SECURITY, produce
from tests.streams.worker import by_window, collect, expected_windows, fleet_events

pytestmark = pytest.mark.integration

SERVERS = 40
SECONDS = 60  # event-seconds per server: 30 before midnight, 30 after
EVERY = 0.3  # wall-clock seconds between two event-seconds
CLOSING = 200  # the event-second that closes every window before it

#: Table → its time column and its cpu average column.
TABLES = {
    "metrics_snapshots": ('"timestamp"', "cpu_usage"),
    "metrics_hourly": ("bucket", "cpu_usage_avg"),
    "metrics_daily": ("bucket", "cpu_usage_avg"),
}


async def members(bootstrap: str, group: str) -> list[set[TopicPartition]]:
    """The partitions of each member of `group` as its coordinator has them; [] while the
    group is not stable (joining, rebalancing)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **SECURITY)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    # (error, group, state, protocol type, protocol, members, …); a member is
    # (id, client id, host, metadata, assignment).
    [described] = response.get_item("groups")
    if described[2] != "Stable":
        return []
    return [set(ConsumerProtocolMemberAssignment.decode(m[4]).partitions()) for m in described[5]]


def partitions(*topics: str) -> set[TopicPartition]:
    return {TopicPartition(t, n) for t in topics for n in range(PARTITIONS)}


async def windows_in(
    conn: asyncpg.Connection, table: str, servers: list[str]
) -> dict[tuple[str, datetime], tuple[object, ...]]:
    """(server, start) → (samples, cpu avg, min, max, rx bytes) of the servers' rows."""
    at, avg = TABLES[table]
    rows = await conn.fetch(
        f"SELECT server_id, {at}, sample_count, {avg}, cpu_usage_min, cpu_usage_max, network_rx"
        f" FROM {table} WHERE server_id = ANY($1)",
        servers,
    )
    found: dict[tuple[str, datetime], tuple[object, ...]] = {
        (r[0], r[1]): (r[2], pytest.approx(r[3]), r[4], r[5], r[6]) for r in rows
    }
    assert len(found) == len(rows), f"a window twice in {table}"
    return found


async def test_two_workers_and_two_sinks_share_the_load_and_survive_kill_9(
    stack_settings: StackSettings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    servers = [str(uuid.uuid4()) for _ in range(SERVERS)]
    # A midnight at least two minutes away: the hour and the day close by event time only.
    midnight = datetime.fromtimestamp(((int(time.time()) + 120) // 86400 + 1) * 86400, UTC)
    t0 = midnight - timedelta(seconds=SECONDS // 2)
    expected = {
        "metrics_snapshots": expected_windows(servers, t0, list(range(SECONDS)), 5),
        "metrics_hourly": expected_windows(servers, t0, list(range(SECONDS // 2)), 3600),
        "metrics_daily": expected_windows(servers, t0, list(range(SECONDS // 2)), 86400),
    }
    logs = tmp_path_factory.mktemp("scale-out-logs")
    async with running_pipeline(stack_settings, logs, streams=2, sinks=2) as (p, token):
        await register(p, token, *servers)
        conn = await p.connect()
        try:
            await scale_out_and_kill(p, conn, servers, t0, expected)
        except (AssertionError, TimeoutError) as exc:
            pytest.fail(f"{exc}\nthe services' logs:{p.all_logs()}", pytrace=False)
        finally:
            await conn.close()
    assert p.procs["stream-2"].returncode == -9 and p.procs["sink-2"].returncode == -9


async def scale_out_and_kill(
    p: Pipeline,
    conn: asyncpg.Connection,
    servers: list[str],
    t0: datetime,
    expected: dict[str, dict[tuple[str, datetime], tuple[int, float, float, float, int]]],
) -> None:
    bootstrap = p.stack.kafka_bootstrap
    raw = partitions(p.topics.raw)
    # The sinks read the DLQ too (late samples).
    aggregates = partitions(p.topics.a5, p.topics.a1h, p.topics.a1d, p.topics.dlq)

    # Shared: two members in each group, each with partitions of its own, together all.
    for group, owned in ((p.stream_group, raw), (p.sink_group, aggregates)):

        async def two_members(group: str = group) -> list[set[TopicPartition]] | None:
            found = await members(bootstrap, group)
            return found if len(found) == 2 and all(found) else None

        first, second = await wait_for(f"two members in {group}", two_members, timeout=60)
        assert not first & second and first | second == owned

    async def hosts() -> None:
        started = time.monotonic()
        for i in range(SECONDS):
            await produce(bootstrap, p.topics.raw, fleet_events(servers, t0, [i]))
            await asyncio.sleep(max(0.0, started + (i + 1) * EVERY - time.monotonic()))
        await produce(bootstrap, p.topics.raw, fleet_events(servers, t0, [CLOSING]))

    async def count(table: str) -> int:
        n: int = await conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE server_id = ANY($1)", servers
        )
        return n

    sending = asyncio.create_task(hosts())
    try:
        # Kill once two 5 s windows of every server have landed, with most of the load to come.
        async def landing() -> bool:
            return await count("metrics_snapshots") >= 2 * SERVERS

        await wait_for("the first rows", landing, timeout=60)
        assert not sending.done(), "the load ended before the kill"
        p.kill("stream-2", "sink-2")
        await sending
    finally:
        sending.cancel()

    async def all_landed() -> bool:
        return all([await count(t) >= len(rows) for t, rows in expected.items()])

    with contextlib.suppress(AssertionError):  # what is missing shows in the comparison below
        await wait_for("every row", all_landed, timeout=60)
    await asyncio.sleep(2)  # a row beyond those expected would show now
    for table, rows in expected.items():
        assert await windows_in(conn, table, servers) == rows, table

    # A window emitted again (replayed after the kill) is identical to its first emission.
    for topic, table in zip((p.topics.a5, p.topics.a1h, p.topics.a1d), TABLES, strict=True):
        emitted = await collect(bootstrap, topic, len(expected[table]), 30, distinct=True)
        assert by_window(emitted).keys() == expected[table].keys()
    # The survivors took every partition over; nothing was dead-lettered.
    assert await members(bootstrap, p.stream_group) == [raw]
    assert await members(bootstrap, p.sink_group) == [aggregates]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **SECURITY)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(list(partitions(p.topics.dlq)))
    finally:
        await consumer.stop()
    assert sum(ends.values()) == 0, "dead letters"
