"""The migrations: the files and their loader (no database), then applied for real on
PostgreSQL 15 over TLS (verify-full) and on the PGlite TimescaleDB stand-in (`infra/pglite/`,
WASM PostgreSQL with TimescaleDB 2.23: hypertables, chunk interval, compression and
retention policies; one client at a time, a test tool only)."""

from __future__ import annotations

import asyncio
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from infra.db import MigrationError, load_migrations, migrate
from infra.db.migrate import SQL_DIR, detect_mode
from infra.settings import StackSettings
from runtime import postgres
from runtime.settings import READER_ROLE, REGISTRY_ROLE, SERVICE_ROLES, SINK_ROLE
from sinks import SinkSettings, maintain
from tests.factories import role_settings


def test_both_modes_have_every_version_in_order() -> None:
    pg = load_migrations("postgres")
    ts = load_migrations("timescaledb")
    assert [m.version for m in pg] == [m.version for m in ts] == sorted({m.version for m in pg})
    assert [m.version for m in pg][:3] == [1, 2, 3]
    assert {m.variant for m in pg} == {"all", "postgres"}
    assert {m.variant for m in ts} == {"all", "timescaledb"}


def test_timescaledb_variant_installs_hypertables_and_policies() -> None:
    sql = "\n".join(m.sql for m in load_migrations("timescaledb"))
    assert "create_hypertable('metrics_snapshots'" in sql
    assert "INTERVAL '1 day'" in sql
    assert "add_compression_policy('metrics_snapshots', INTERVAL '7 days'" in sql
    assert "add_retention_policy('metrics_snapshots', INTERVAL '30 days'" in sql


def _write(d: Path, name: str, sql: str = "SELECT 1;") -> None:
    (d / name).write_text(sql)


def test_missing_mode_variant_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "0001_a.sql")
    _write(tmp_path, "0002_b.postgres.sql")
    with pytest.raises(MigrationError, match=r"0002 needs both"):
        load_migrations("postgres", tmp_path)


def test_common_and_mode_file_for_one_version_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "0001_a.sql")
    _write(tmp_path, "0001_a.postgres.sql")
    _write(tmp_path, "0001_a.timescaledb.sql")
    with pytest.raises(MigrationError, match="both a common and a per-mode"):
        load_migrations("postgres", tmp_path)


def test_bad_file_name_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "1_a.sql")
    with pytest.raises(MigrationError, match="not a migration name"):
        load_migrations("postgres", tmp_path)


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
async def test_edited_migration_is_refused(app_conn: asyncpg.Connection, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    await migrate(app_conn, directory=sql_dir)
    path = sql_dir / "0002_users_servers.sql"
    path.write_text(path.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(app_conn, directory=sql_dir)


@pytest.mark.integration
async def test_storage_mode_cannot_switch(app_conn: asyncpg.Connection) -> None:
    await migrate(app_conn, storage="postgres")
    with pytest.raises(MigrationError, match="cannot be switched"):
        await migrate(app_conn, storage="timescaledb")


def test_every_service_role_gets_grants_in_both_modes() -> None:
    for mode in ("postgres", "timescaledb"):
        sql = "\n".join(m.sql for m in load_migrations(mode))
        for role in SERVICE_ROLES:
            # Since migration 0008 the grants are rows of role_grants, one file for both modes.
            assert f"('{role}', " in sql, (mode, role)
        assert "REVOKE ALL ON FUNCTION fleetpulse_grant_roles() FROM PUBLIC" in sql
        # Every function that runs as its owner is taken away from PUBLIC.
        definers = re.findall(r"FUNCTION (\w+)\([^;]*?SECURITY DEFINER", sql, re.DOTALL)
        for name in definers:
            assert re.search(rf"REVOKE ALL ON FUNCTION {name}\(.*?\)\s+FROM PUBLIC", sql), name
        if mode == "postgres":
            assert set(definers) == {"fleetpulse_ensure_partitions", "fleetpulse_drop_partitions"}


# -- the services' roles (tables as the owner made them; each role as it logs in) ------------------
async def _login(stack: StackSettings, role: str, database: str) -> asyncpg.Connection:
    conn = await postgres.connect(role_settings(stack, role, database))
    assert await conn.fetchval("SELECT current_user") == role
    return conn


def _denied(what: str) -> pytest.RaisesExc[asyncpg.InsufficientPrivilegeError]:
    return pytest.raises(asyncpg.InsufficientPrivilegeError, match=what)


async def _as_owner(stack: StackSettings, database: str, sql: str, *args: object) -> None:
    conn = await asyncpg.connect(**stack.connect_kwargs(database=database))
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


def _today_partition() -> str:
    return f"metrics_snapshots_p{datetime.now(UTC):%Y%m%d}"


@pytest.mark.integration
async def test_the_sink_role_writes_metrics_and_reads_no_registry_table(
    stack_settings: StackSettings, stack_database: str
) -> None:
    await _as_owner(
        stack_settings,
        stack_database,
        "INSERT INTO servers (id, name, hostname, port, username, encrypted_password) "
        "VALUES ($1, 'web-1', 'web-1.example', 22, 'ops', 'v1:x')",
        SERVER,
    )
    conn = await _login(stack_settings, SINK_ROLE, stack_database)
    try:
        now = datetime.now(UTC)
        await conn.execute(_UPSERT_SNAPSHOT, SERVER, now)
        await conn.execute(_UPSERT_SNAPSHOT, SERVER, now)  # the upsert's UPDATE, and its SELECT
        assert await conn.fetchval("SELECT count(*) FROM metrics_snapshots") == 1
        for table in ("users", "servers", "sessions", "login_failures"):
            with _denied(f"permission denied for table {table}"):
                await conn.fetch(f"SELECT * FROM {table}")
        with _denied("permission denied for table metrics_snapshots"):
            await conn.execute("DELETE FROM metrics_snapshots")
        with _denied("permission denied for table metrics_hourly"):
            await conn.execute("TRUNCATE metrics_hourly")
        with _denied("permission denied for schema public"):
            await conn.execute("CREATE TABLE mine (i int)")
        with _denied("must be owner of table"):
            await conn.execute(f'DROP TABLE "{_today_partition()}"')
    finally:
        await conn.close()


@pytest.mark.integration
async def test_the_registry_role_keeps_its_tables_and_only_reads_metrics(
    stack_settings: StackSettings, stack_database: str
) -> None:
    conn = await _login(stack_settings, REGISTRY_ROLE, stack_database)
    try:
        await conn.execute(
            "INSERT INTO users (id, email, password_hash, name) VALUES ('u1', 'a@b.c', 'h', 'A')"
        )
        await conn.execute("UPDATE users SET name = 'B' WHERE id = 'u1'")
        await _add_server(conn)
        await conn.execute(
            "INSERT INTO login_failures (email, failures, first_failed_at) VALUES ('x', 1, now())"
        )
        await conn.execute("DELETE FROM login_failures")
        await conn.fetch("SELECT * FROM sessions")
        await conn.execute("DELETE FROM users WHERE id = 'u1'")
        for table in ("metrics_snapshots", "metrics_hourly", "metrics_daily"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0
        with _denied("permission denied for table metrics_snapshots"):
            await conn.execute(_INSERT_SNAPSHOT, SERVER, datetime.now(UTC))
        for table in (_today_partition(), "metrics_snapshots", "users"):
            with _denied(f"must be owner of table {table}"):
                await conn.execute(f'DROP TABLE "{table}"')
        with _denied("permission denied for table users"):
            await conn.execute("TRUNCATE users")
        with _denied("must be owner of table users"):
            await conn.execute("ALTER TABLE users ADD COLUMN mine int")
        with _denied("permission denied for function fleetpulse_drop_partitions"):
            await conn.fetch("SELECT fleetpulse_drop_partitions('metrics_snapshots', now())")
        # Deleting a server takes its metrics along (the foreign key's cascade runs as the
        # tables' owner).
        await _as_owner(stack_settings, stack_database, _INSERT_SNAPSHOT, SERVER, datetime.now(UTC))
        assert await conn.fetchval("SELECT count(*) FROM metrics_snapshots") == 1
        await conn.execute("DELETE FROM servers WHERE id = $1", SERVER)
        assert await conn.fetchval("SELECT count(*) FROM metrics_snapshots") == 0
    finally:
        await conn.close()


@pytest.mark.integration
async def test_the_reader_role_only_reads_metrics(
    stack_settings: StackSettings, stack_database: str
) -> None:
    conn = await _login(stack_settings, READER_ROLE, stack_database)
    try:
        for table in ("metrics_snapshots", "metrics_hourly", "metrics_daily"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0
        with _denied("permission denied for table metrics_snapshots"):
            await conn.execute(_INSERT_SNAPSHOT, SERVER, datetime.now(UTC))
        with _denied("permission denied for table metrics_hourly"):
            await conn.execute("UPDATE metrics_hourly SET sample_count = 1")
        with _denied("permission denied for table metrics_daily"):
            await conn.execute("DELETE FROM metrics_daily")
        for table in ("users", "servers", "sessions", "login_failures", "schema_migrations"):
            with _denied(f"permission denied for table {table}"):
                await conn.fetch(f"SELECT * FROM {table}")
        with _denied("permission denied for function fleetpulse_ensure_partitions"):
            await conn.fetchval(
                "SELECT fleetpulse_ensure_partitions('metrics_snapshots', 'day', now(), now())"
            )
    finally:
        await conn.close()


@pytest.mark.integration
async def test_timescaledb_grants(ts_conn: asyncpg.Connection) -> None:
    """On the stand-in (no login roles of its own): the roles made after the migrations get
    their grants from the function `stack up` runs, and a new chunk has its hypertable's."""
    await migrate(ts_conn)
    for role in SERVICE_ROLES:
        await ts_conn.execute(
            f"DO $$ BEGIN IF to_regrole('{role}') IS NULL THEN CREATE ROLE {role}; END IF; END $$"
        )
    await ts_conn.execute("SELECT fleetpulse_grant_roles()")
    sid = "0b9c7a51-3c2e-4f7e-9d6a-5a8f2e1c4b77"
    await ts_conn.execute(
        "INSERT INTO servers (id, name, hostname, port, username, encrypted_password) "
        "VALUES ($1, 'g', 'grants.example', 22, 'ops', 'v1:x') ON CONFLICT DO NOTHING",
        sid,
    )
    # A day far from the others: a chunk of its own, made after the grants.
    await ts_conn.execute(_INSERT_SNAPSHOT, sid, datetime(2031, 3, 3, tzinfo=UTC))
    chunk = await ts_conn.fetchval(
        "SELECT format('%I.%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks "
        "WHERE hypertable_name = 'metrics_snapshots' AND range_start <= '2031-03-03' "
        "AND range_end > '2031-03-03'"
    )
    privileges = {
        (r["role"], r["rel"]): set(r["granted"])
        for r in await ts_conn.fetch(
            "SELECT role, rel, array_remove(ARRAY["
            "CASE WHEN has_table_privilege(role, rel, 'SELECT') THEN 'SELECT' END, "
            "CASE WHEN has_table_privilege(role, rel, 'INSERT') THEN 'INSERT' END, "
            "CASE WHEN has_table_privilege(role, rel, 'UPDATE') THEN 'UPDATE' END, "
            "CASE WHEN has_table_privilege(role, rel, 'DELETE') THEN 'DELETE' END], NULL) "
            "AS granted FROM unnest($1::text[]) AS role, unnest($2::text[]) AS rel",
            list(SERVICE_ROLES),
            ["metrics_snapshots", "metrics_daily", "users", "servers", "sessions", chunk],
        )
    }
    read, write = {"SELECT"}, {"SELECT", "INSERT", "UPDATE"}
    crud = write | {"DELETE"}
    for rel in ("metrics_snapshots", "metrics_daily", chunk):
        assert privileges[SINK_ROLE, rel] == write, rel
        assert privileges[REGISTRY_ROLE, rel] == read, rel
        assert privileges[READER_ROLE, rel] == read, rel
    for rel in ("users", "servers", "sessions"):
        assert privileges[SINK_ROLE, rel] == set(), rel
        assert privileges[REGISTRY_ROLE, rel] == crud, rel
        assert privileges[READER_ROLE, rel] == set(), rel
    # The sink's maintenance on TimescaleDB reads the policies as that role.
    await ts_conn.execute(f"SET ROLE {SINK_ROLE}")
    try:
        report = await maintain(ts_conn, SinkSettings())
    finally:
        await ts_conn.execute("RESET ROLE")
    assert report.mode == "timescaledb" and report.missing == []


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

_UPSERT_SNAPSHOT = (
    _INSERT_SNAPSHOT
    + """ON CONFLICT (server_id, "timestamp") DO UPDATE SET cpu_usage = EXCLUDED.cpu_usage
WHERE metrics_snapshots.sample_count <= EXCLUDED.sample_count"""
)
