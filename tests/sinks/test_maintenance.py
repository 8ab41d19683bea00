"""Integration: partitions created ahead and dropped past retention, with a clock we control,
as the sink's role (through the owner's SECURITY DEFINER functions); on TimescaleDB, the
policies are checked, not duplicated."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from infra.db import migrate
from infra.settings import StackSettings
from runtime import postgres
from runtime.settings import READER_ROLE, SINK_ROLE
from schemas.resolutions import BASE
from sinks import SinkSettings, maintain
from sinks.rows import TABLES, to_row
from sinks.writer import BatchWriter
from tests.factories import add_server, aggregate, role_settings

pytestmark = pytest.mark.integration


async def _partitions(conn: asyncpg.Connection, table: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass",
        table,
    )
    return {r["relname"] for r in rows}


@pytest.fixture
async def sink_conn(
    stack_settings: StackSettings, stack_database: str
) -> AsyncIterator[asyncpg.Connection]:
    """A migrated database of the local stack, as the sink logs in to it."""
    conn = await postgres.connect(role_settings(stack_settings, SINK_ROLE, stack_database))
    try:
        yield conn
    finally:
        await conn.close()


async def test_partitions_ahead_and_retention(sink_conn: asyncpg.Connection) -> None:
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    settings = SinkSettings(retention_hourly_days=60)

    # The clock moves 40 days on: the week ahead of "now" appears, 5 s partitions older than
    # 30 days (by their upper bound) go, hourly partitions older than 60 days go.
    later = today + timedelta(days=40)
    report = await maintain(sink_conn, settings, now=later)
    snaps = await _partitions(sink_conn, "metrics_snapshots")
    for d in range(-30, 8):
        assert f"metrics_snapshots_p{later + timedelta(days=d):%Y%m%d}" in snaps
    assert f"metrics_snapshots_p{later + timedelta(days=8):%Y%m%d}" not in snaps
    oldest_kept = later - timedelta(days=30)
    assert all(name >= f"metrics_snapshots_p{oldest_kept:%Y%m%d}" for name in snaps)
    assert f"metrics_snapshots_p{today:%Y%m%d}" in report.dropped
    # Days later-30 .. later+7 that the migration (run today) had not made: 38.
    assert report.created == 38
    assert any(n.startswith("metrics_hourly_p") for n in report.dropped) or all(
        n >= f"metrics_hourly_p{later - timedelta(days=90):%Y%m}"
        for n in await _partitions(sink_conn, "metrics_hourly")
    )
    # Daily rows are kept forever by default: nothing dropped there.
    assert not any(n.startswith("metrics_daily_p") for n in report.dropped)

    again = await maintain(sink_conn, settings, now=later)
    assert again.created == 0 and again.dropped == []


async def test_the_sink_maintains_only_through_the_owners_functions(
    sink_conn: asyncpg.Connection, stack_settings: StackSettings, stack_database: str
) -> None:
    """The sink's role makes and drops partitions only through the functions, which take
    nothing but the owner's partitioned tables; partitions made later are written and read
    through their parent with the parent's grants."""
    ahead = datetime.now(UTC) + timedelta(days=45)
    part = f"metrics_snapshots_p{ahead:%Y%m%d}"
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for schema"):
        await sink_conn.execute(
            f"CREATE TABLE {part} PARTITION OF metrics_snapshots "
            f"FOR VALUES FROM ('{ahead:%Y-%m-%d}') TO ('{ahead + timedelta(days=1):%Y-%m-%d}')"
        )
    for function in (
        "fleetpulse_ensure_partitions('users', 'day', now(), now() + interval '1 day')",
        "fleetpulse_drop_partitions('users', now())",
    ):
        with pytest.raises(asyncpg.RaiseError, match="is not a partitioned table of fleetpulse"):
            await sink_conn.execute(f"SELECT {function}")
    made = await sink_conn.fetchval(
        "SELECT fleetpulse_ensure_partitions('metrics_snapshots', 'day', $1, $2)",
        ahead,
        ahead + timedelta(hours=1),
    )
    assert made == 1
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="must be owner"):
        await sink_conn.execute(f"DROP TABLE {part}")

    server = str(uuid.uuid4())
    owner = await asyncpg.connect(**stack_settings.connect_kwargs(database=stack_database))
    try:
        await add_server(owner, server)
    finally:
        await owner.close()
    row = to_row(aggregate(server, ahead))
    await BatchWriter("copy").upsert(sink_conn, TABLES[BASE.name], [row])
    reader = await postgres.connect(role_settings(stack_settings, READER_ROLE, stack_database))
    try:
        assert (
            await reader.fetchval(
                'SELECT count(*) FROM metrics_snapshots WHERE server_id = $1 AND "timestamp" = $2',
                server,
                ahead,
            )
            == 1
        )
    finally:
        await reader.close()


async def test_timescaledb_policies_are_checked_not_added(
    ts_conn: asyncpg.Connection,
) -> None:
    await migrate(ts_conn)
    jobs_before = await ts_conn.fetchval("SELECT count(*) FROM timescaledb_information.jobs")
    report = await maintain(ts_conn, SinkSettings())
    assert report.mode == "timescaledb" and report.missing == []
    assert "metrics_snapshots:retention" in report.policies
    assert "metrics_snapshots:compression" in report.policies
    assert (
        await ts_conn.fetchval("SELECT count(*) FROM timescaledb_information.jobs") == jobs_before
    )
