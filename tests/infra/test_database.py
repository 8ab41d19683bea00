"""Integration: migrations on the real PostgreSQL 15 over TLS (verify-full)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from infra.db import MigrationError, migrate
from infra.db.migrate import SQL_DIR, detect_mode, load_migrations
from infra.settings import StackSettings
from infra.stack import PostgresCluster

pytestmark = pytest.mark.integration

SEED_TABLES = {"users", "servers", "metrics_snapshots", "metrics_hourly", "metrics_daily"}
SERVER = "6f1c2a8e-4b7d-4e0a-9c35-0d2f5b8e91a4"
#: Every migration in infra/db/sql (the same versions in both storage modes).
VERSIONS = [m.version for m in load_migrations("postgres")]


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
    )
    return {r["relname"] for r in rows}


async def test_migrations_apply_twice_over_tls(
    app_conn: asyncpg.Connection, service_settings: StackSettings
) -> None:
    if service_settings.pg_sslmode != "disable":
        assert await app_conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    first = await migrate(app_conn)
    assert first.mode == await detect_mode(app_conn)
    assert [m.version for m in first.applied] == VERSIONS
    second = await migrate(app_conn)
    assert second.applied == [] and second.already == len(VERSIONS)
    assert await _tables(app_conn) >= SEED_TABLES
    assert await app_conn.fetchval("SELECT count(*) FROM schema_migrations") == len(VERSIONS)


async def test_migrations_from_two_processes_at_once(
    service_settings: StackSettings, fresh_database: str
) -> None:
    conns = [
        await asyncpg.connect(**service_settings.connect_kwargs(database=fresh_database))
        for _ in range(3)
    ]
    try:
        reports = await asyncio.gather(*(migrate(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert sorted(len(r.applied) for r in reports) == [0, 0, len(VERSIONS)]


async def test_seed_schema(app_conn: asyncpg.Connection) -> None:
    await migrate(app_conn)
    enums = await app_conn.fetch(
        "SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) AS labels "
        "FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname"
    )
    by_name = {r["typname"]: r["labels"] for r in enums}
    assert by_name["user_role"] == ["admin", "user"]
    assert "email" in by_name["auth_provider"]
    assert "linux" in by_name["server_type"] and "physical" in by_name["server_category"]

    indexes = {
        r["indexname"]: r["indexdef"]
        for r in await app_conn.fetch("SELECT indexname, indexdef FROM pg_indexes")
    }
    assert '(server_id, "timestamp")' in indexes["idx_metrics_server_time"]
    assert "(hostname, port)" in indexes["idx_servers_hostname_port"]

    defaults = await app_conn.fetchrow(
        "INSERT INTO users (id, email, password_hash, name) VALUES ('u1', 'a@b.c', 'h', 'A') "
        "RETURNING role::text, active, provider::text, created_at"
    )
    assert defaults is not None
    assert (defaults["role"], defaults["active"], defaults["provider"]) == ("user", True, "email")
    with pytest.raises(asyncpg.UniqueViolationError):
        await app_conn.execute(
            "INSERT INTO users (id, email, password_hash, name) VALUES ('u2', 'a@b.c', 'h', 'B')"
        )


async def _add_server(conn: asyncpg.Connection, server_id: str = SERVER) -> None:
    await conn.execute(
        "INSERT INTO servers (id, name, hostname, port, username, encrypted_password) "
        "VALUES ($1, 'web-1', $2, 22, 'ops', 'v1:x')",
        server_id,
        f"{server_id}.example",
    )


_INSERT_SNAPSHOT = """
INSERT INTO metrics_snapshots (server_id, "timestamp", cpu_usage, memory_usage, disk_usage,
    cpu_usage_min, cpu_usage_max, memory_usage_min, memory_usage_max, disk_usage_min,
    disk_usage_max, sample_count, network_rx, network_tx, processes)
VALUES ($1, $2, 10, 20, 30, 5, 15, 19, 21, 30, 30, 5, 100, 200, '[]')
"""


async def test_daily_partitions_and_keys(app_conn: asyncpg.Connection) -> None:
    await migrate(app_conn, storage="postgres")
    await _add_server(app_conn)
    now = datetime.now(UTC)
    parts = await app_conn.fetch(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'metrics_snapshots'::regclass"
    )
    names = {r["relname"] for r in parts}
    for days in range(-30, 7):
        assert f"metrics_snapshots_p{(now + timedelta(days=days)):%Y%m%d}" in names
    assert f"metrics_hourly_p{now:%Y%m}" in {
        r["relname"]
        for r in await app_conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'metrics_hourly'::regclass"
        )
    }
    today = f"metrics_snapshots_p{now:%Y%m%d}"
    bound = next(r["bound"] for r in parts if r["relname"] == today)
    assert f"FROM ('{now:%Y-%m-%d} 00:00:00+00')" in bound

    # Rows land in their day's partition; the (server_id, timestamp) key refuses duplicates.
    await app_conn.execute(_INSERT_SNAPSHOT, SERVER, now)
    assert await app_conn.fetchval(f'SELECT count(*) FROM "{today}"') == 1
    with pytest.raises(asyncpg.UniqueViolationError):
        await app_conn.execute(_INSERT_SNAPSHOT, SERVER, now)
    # A row for an unknown server is refused by the foreign key.
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await app_conn.execute(_INSERT_SNAPSHOT, "00000000-0000-0000-0000-000000000000", now)
    # A row far outside the created partitions is refused, not silently kept elsewhere.
    with pytest.raises(asyncpg.CheckViolationError):
        await app_conn.execute(_INSERT_SNAPSHOT, SERVER, now + timedelta(days=60))

    # Creating partitions again is a no-op; further ahead creates exactly the missing ones.
    made = await app_conn.fetchval(
        "SELECT fleetpulse_ensure_partitions("
        "'metrics_snapshots', 'day', now(), now() + interval '9 days')"
    )
    assert made == 2


async def test_edited_migration_is_refused(app_conn: asyncpg.Connection, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    await migrate(app_conn, directory=sql_dir)
    path = sql_dir / "0002_users_servers.sql"
    path.write_text(path.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(app_conn, directory=sql_dir)


async def test_storage_mode_cannot_switch(app_conn: asyncpg.Connection) -> None:
    await migrate(app_conn, storage="postgres")
    with pytest.raises(MigrationError, match="cannot be switched"):
        await migrate(app_conn, storage="timescaledb")


def _psql(settings: StackSettings, sslmode: str, sql: str) -> subprocess.CompletedProcess[str]:
    dsn = (
        f"host=localhost port={settings.pg_port} dbname={settings.pg_database} "
        f"user={settings.pg_user} sslmode={sslmode} sslrootcert={settings.ca_path}"
    )
    env = {**os.environ, "PGPASSWORD": settings.password() or "", "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run(
        ["psql", dsn, "-At", "-c", sql], capture_output=True, text=True, env=env, timeout=30
    )


def test_psql_verify_full_sees_the_seed_tables(stack_settings: StackSettings) -> None:
    result = _psql(stack_settings, "verify-full", "SELECT tablename FROM pg_tables ORDER BY 1")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) >= SEED_TABLES


def test_plaintext_connections_are_refused(stack_settings: StackSettings) -> None:
    result = _psql(stack_settings, "disable", "SELECT 1")
    assert result.returncode != 0
    assert "no encryption" in result.stderr or "reject" in result.stderr


async def test_wal_is_archived(stack_settings: StackSettings) -> None:
    admin = await asyncpg.connect(
        host=str(PostgresCluster(stack_settings).socket_dir),
        port=stack_settings.pg_port,
        user="postgres",
        database="postgres",
    )
    try:
        settings = {
            r["name"]: r["setting"]
            for r in await admin.fetch(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('archive_mode', 'archive_timeout', 'wal_level', 'ssl')"
            )
        }
        assert settings == {
            "archive_mode": "on",
            "archive_timeout": "300",
            "wal_level": "replica",
            "ssl": "on",
        }
        await admin.execute("CREATE TEMP TABLE t AS SELECT 1")
        before = await admin.fetchval("SELECT archived_count FROM pg_stat_archiver")
        segment = await admin.fetchval("SELECT pg_walfile_name(pg_switch_wal())")
        async with asyncio.timeout(30):
            # The archiver has no notification to wait on: poll its counter.
            while True:
                count = await admin.fetchval("SELECT archived_count FROM pg_stat_archiver")
                if count > before:
                    break
                await asyncio.sleep(0.2)
        failed = await admin.fetchval("SELECT failed_count FROM pg_stat_archiver")
    finally:
        await admin.close()
    assert failed == 0
    assert (PostgresCluster(stack_settings).archive / segment).exists() or any(
        PostgresCluster(stack_settings).archive.iterdir()
    )
