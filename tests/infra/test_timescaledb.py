"""Integration: the TimescaleDB migrations on the PGlite TimescaleDB stand-in.

The stand-in (`infra/pglite/server.mjs`, WASM PostgreSQL with TimescaleDB 2.23 served over the
wire protocol) checks the TimescaleDB DDL for real: hypertables, chunk interval, compression
and retention policies. It serves one client at a time and is a test tool only.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import asyncpg
import pytest

from infra.db import load_migrations, migrate
from infra.stack.process import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

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


async def test_timescaledb_migrations(ts_conn: asyncpg.Connection) -> None:
    report = await migrate(ts_conn, storage="auto")
    assert report.mode == "timescaledb"
    assert [m.version for m in report.applied] == [
        m.version for m in load_migrations("timescaledb")
    ]
    again = await migrate(ts_conn)
    assert again.applied == [] and again.mode == "timescaledb"

    hypertables = {
        r["hypertable_name"]: r
        for r in await ts_conn.fetch(
            "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables"
        )
    }
    assert set(hypertables) == {"metrics_snapshots", "metrics_hourly", "metrics_daily"}
    assert hypertables["metrics_snapshots"]["compression_enabled"]

    dims = {
        r["hypertable_name"]: r
        for r in await ts_conn.fetch(
            "SELECT hypertable_name, column_name, time_interval "
            "FROM timescaledb_information.dimensions"
        )
    }
    assert dims["metrics_snapshots"]["column_name"] == "timestamp"
    assert dims["metrics_snapshots"]["time_interval"] == timedelta(days=1)

    segment = await ts_conn.fetchval(
        "SELECT attname FROM timescaledb_information.compression_settings "
        "WHERE hypertable_name = 'metrics_snapshots' AND segmentby_column_index = 1"
    )
    assert segment == "server_id"

    jobs = {
        (r["hypertable_name"], r["proc_name"]): r["config"]
        for r in await ts_conn.fetch(
            "SELECT hypertable_name, proc_name, config::text AS config "
            "FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL"
        )
    }
    assert '"compress_after": "7 days"' in jobs[("metrics_snapshots", "policy_compression")]
    assert '"drop_after": "30 days"' in jobs[("metrics_snapshots", "policy_retention")]
    assert '"drop_after": "400 days"' in jobs[("metrics_hourly", "policy_retention")]


async def test_hypertable_keys_and_foreign_key(ts_conn: asyncpg.Connection) -> None:
    await migrate(ts_conn)
    sid = "6f1c2a8e-4b7d-4e0a-9c35-0d2f5b8e91a4"
    await ts_conn.execute(
        "INSERT INTO servers (id, name, hostname, port, username, encrypted_password) "
        "VALUES ($1, 'w', 'w.example', 22, 'ops', 'v1:x') ON CONFLICT DO NOTHING",
        sid,
    )
    insert = """
        INSERT INTO metrics_snapshots (server_id, "timestamp", cpu_usage, memory_usage,
            disk_usage, cpu_usage_min, cpu_usage_max, memory_usage_min, memory_usage_max,
            disk_usage_min, disk_usage_max, sample_count, network_rx, network_tx, processes)
        VALUES ($1, now(), 1, 2, 3, 1, 1, 2, 2, 3, 3, 5, 0, 0, '[]')
    """
    await ts_conn.execute(insert, sid)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await ts_conn.execute(insert, "00000000-0000-0000-0000-000000000000")
    count = await ts_conn.fetchval(
        "SELECT count(*) FROM metrics_snapshots WHERE server_id = $1", sid
    )
    assert count == 1
