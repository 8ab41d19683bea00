"""Integration: the local PostgreSQL 15 cluster: verify-full TLS only, WAL archived by
pgBackRest, one login role per service with its own password file, rotated on demand."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
from pathlib import Path

import asyncpg
import pytest

from infra.settings import StackSettings
from infra.stack import PostgresCluster, StackError
from infra.stack.postgres import STANZA, rotate_password
from runtime import postgres
from runtime.settings import OWNER_ROLE, READER_ROLE, SERVICE_ROLES, SINK_ROLE
from tests.factories import role_settings

pytestmark = pytest.mark.integration

SEED_TABLES = {"users", "servers", "metrics_snapshots", "metrics_hourly", "metrics_daily"}


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
        stats = await admin.fetchrow("SELECT archived_count, failed_count FROM pg_stat_archiver")
        assert stats is not None
        before, failed_before = stats
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
    assert failed == failed_before
    # pgBackRest keeps it compressed and encrypted, named after it and its checksum.
    archived = list(stack_settings.backup_repo.glob(f"archive/{STANZA}/*/*/{segment}-*"))
    assert len(archived) == 1, archived


# -- the login roles ---------------------------------------------------------------------------
async def test_each_role_logs_in_over_tls_with_its_own_password_file(
    stack_settings: StackSettings,
) -> None:
    cluster = PostgresCluster(stack_settings)
    assert cluster.roles == (OWNER_ROLE, *SERVICE_ROLES)
    files = {cluster.password_file(role) for role in cluster.roles}
    assert files == {stack_settings.home_dir / "secrets" / "pg" / r for r in cluster.roles}
    for role in cluster.roles:
        path = cluster.password_file(role)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        settings = role_settings(stack_settings, role, stack_settings.pg_database)
        assert settings.pg_sslmode == "verify-full"
        conn = await postgres.connect(settings)
        try:
            assert await conn.fetchval("SELECT current_user") == role
            assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        finally:
            await conn.close()
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
            await asyncpg.connect(**{**settings.connect_kwargs(), "ssl": False})
    admin = await cluster.superuser_connect()
    try:
        rows = await admin.fetch(
            "SELECT rolname, rolpassword, rolsuper OR rolcreaterole OR rolcreatedb "
            "OR rolreplication OR rolbypassrls AS privileged FROM pg_authid "
            "WHERE rolname = ANY($1::text[])",
            list(cluster.roles),
        )
    finally:
        await admin.close()
    assert {r["rolname"] for r in rows} == set(cluster.roles)
    for r in rows:
        assert r["rolpassword"].startswith("SCRAM-SHA-256$4096:"), r["rolname"]
        assert not r["privileged"], r["rolname"]


async def test_a_running_cluster_of_an_earlier_release_gets_the_roles_at_stack_up(
    stack_settings: StackSettings,
) -> None:
    """A cluster started (and migrated) before the services had roles: `stack up` makes the
    missing role with a new password file, and grants it its privileges."""
    cluster = PostgresCluster(stack_settings)
    admin = await cluster.superuser_connect()
    try:
        rows = await admin.fetch("SELECT datname FROM pg_database WHERE datallowconn")
        databases = [r["datname"] for r in rows]
    finally:
        await admin.close()
    for database in databases:
        conn = await cluster.superuser_connect(database)
        try:
            await conn.execute(f"DROP OWNED BY {READER_ROLE}")
        finally:
            await conn.close()
    admin = await cluster.superuser_connect()
    try:
        await admin.execute(f"DROP ROLE {READER_ROLE}")
    finally:
        await admin.close()
    cluster.password_file(READER_ROLE).unlink()

    assert await asyncio.to_thread(cluster.start) is False  # it was running
    reader = role_settings(stack_settings, READER_ROLE, stack_settings.pg_database)
    conn = await postgres.connect(reader)
    try:
        assert await conn.fetchval("SELECT count(*) >= 0 FROM metrics_snapshots")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="users"):
            await conn.fetch("SELECT * FROM users")
    finally:
        await conn.close()


async def test_a_rotated_password_is_used_by_the_next_connection(
    stack_settings: StackSettings,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = role_settings(stack_settings, SINK_ROLE, stack_settings.pg_database)
    old = settings.password()
    assert old
    pool = await postgres.create_pool(settings, min_size=1, max_size=2)
    try:
        async with pool.acquire() as opened_before:
            path = await rotate_password(stack_settings, SINK_ROLE)
            assert path == settings.password_path
            new = path.read_text()
            assert new and new != old
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
            async with pool.acquire() as opened_after:  # a new connection: reads the file
                assert await opened_after.fetchval("SELECT current_user") == SINK_ROLE
            assert await opened_before.fetchval("SELECT 1") == 1  # open ones go on
    finally:
        await pool.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(**{**settings.connect_kwargs(), "password": old})
    out, err = capsys.readouterr()
    server_log = PostgresCluster(stack_settings).log.read_text(errors="replace")
    for text in (caplog.text, out, err, server_log):
        assert new not in text and old not in text


async def test_rotation_refuses_a_role_the_stack_does_not_keep(
    stack_settings: StackSettings,
) -> None:
    with pytest.raises(StackError, match="'postgres' is not one of the stack's database roles"):
        await rotate_password(stack_settings, "postgres")


def test_the_owners_password_moves_from_where_earlier_releases_kept_it(tmp_path: Path) -> None:
    cluster = PostgresCluster(StackSettings(home=tmp_path))
    legacy = tmp_path / "secrets" / "pg_password"
    legacy.parent.mkdir(mode=0o700)
    legacy.write_text("the-owners-password")
    legacy.chmod(0o600)
    cluster.adopt_legacy_password()
    moved = tmp_path / "secrets" / "pg" / OWNER_ROLE
    assert not legacy.exists() and moved.read_text() == "the-owners-password"
    assert stat.S_IMODE(moved.stat().st_mode) == 0o600
    assert stat.S_IMODE(moved.parent.stat().st_mode) == 0o700
    # Once only: a password already in the new place wins.
    legacy.write_text("stale")
    cluster.adopt_legacy_password()
    assert moved.read_text() == "the-owners-password" and legacy.exists()
