"""Integration: partitions created ahead and dropped past retention, with a clock we control;
on TimescaleDB, the policies are checked, not duplicated."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from infra.db import migrate
from sinks import SinkSettings, maintain

pytestmark = pytest.mark.integration


async def _partitions(conn: asyncpg.Connection, table: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass",
        table,
    )
    return {r["relname"] for r in rows}


async def test_partitions_ahead_and_retention(app_conn: asyncpg.Connection) -> None:
    await migrate(app_conn, storage="postgres")
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    settings = SinkSettings(retention_hourly_days=60)

    # The clock moves 40 days on: the week ahead of "now" appears, 5 s partitions older than
    # 30 days (by their upper bound) go, hourly partitions older than 60 days go.
    later = today + timedelta(days=40)
    report = await maintain(app_conn, settings, now=later)
    snaps = await _partitions(app_conn, "metrics_snapshots")
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
        for n in await _partitions(app_conn, "metrics_hourly")
    )
    # Daily rows are kept forever by default: nothing dropped there.
    assert not any(n.startswith("metrics_daily_p") for n in report.dropped)

    again = await maintain(app_conn, settings, now=later)
    assert again.created == 0 and again.dropped == []


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
