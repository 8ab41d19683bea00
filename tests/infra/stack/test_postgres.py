"""Integration: the local PostgreSQL 15 cluster: verify-full TLS only, WAL archived by
pgBackRest."""

from __future__ import annotations

import asyncio
import os
import subprocess

import asyncpg
import pytest

from infra.settings import StackSettings
from infra.stack import PostgresCluster
from infra.stack.postgres import STANZA

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
