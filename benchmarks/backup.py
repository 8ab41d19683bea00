"""Backups: a full pgBackRest backup and a restore of a database with 5 million
`metrics_snapshots` rows, its daily dump, and the RPO measured at the default archive_timeout.

Everything runs on a PostgreSQL 15 cluster of its own (own home under `<home>/bench/`, own
port, own pgBackRest repository, zstd and aes-256-cbc as the stack sets it up), so the drill
can kill it. The rows are written with one INSERT … SELECT (500 servers x 10,000 windows), and
counted before anything is timed. Each restore is checked before it counts: the restored
cluster holds all 5,000,000 rows; each dump is verified (restored into a scratch database,
rows and checksum compared with its manifest). RPO: rows are committed every 50 ms for a
random 5 to 10 minutes, then the postmaster is killed with SIGKILL and its data folder
deleted; `latest` is restored from the repository; lost = the last acknowledged commit minus
the newest commit in the restored copy.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from benchmarks.common import row, stack_up
from infra.backup import base, dumps
from infra.backup.settings import BackupSettings
from infra.db import migrate
from infra.stack import PostgresCluster
from infra.stack.pgbackrest import PgBackRest
from infra.stack.process import free_port
from tests.factories import fill_snapshots

SERVERS = 500
WINDOWS = 10_000
ROWS = SERVERS * WINDOWS
RUNS = 3
RPO_MIN, RPO_MAX = 300.0, 600.0


def _say(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def _cluster(home: Path) -> BackupSettings:
    shutil.rmtree(home, ignore_errors=True)
    settings = BackupSettings(home=home, pg_port=free_port())
    cluster = PostgresCluster(settings)
    cluster.start()
    PgBackRest(settings, cluster).ensure()
    return settings


async def _fill(settings: BackupSettings) -> int:
    conn = await PostgresCluster(settings).superuser_connect(settings.pg_database)
    try:
        await migrate(conn)
        await fill_snapshots(conn, SERVERS, WINDOWS)
        await conn.execute("CHECKPOINT")
        count = int(await conn.fetchval("SELECT count(*) FROM metrics_snapshots"))
        if count != ROWS:
            raise RuntimeError(f"{count:,} of {ROWS:,} rows written")
        return int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()


async def _restored_rows(into: Path, port: int) -> int:
    conn = await asyncpg.connect(host=str(into), port=port, user="postgres", database="fleetpulse")
    try:
        return int(await conn.fetchval("SELECT count(*) FROM metrics_snapshots"))
    finally:
        await conn.close()


def _sizes(settings: BackupSettings, runs: int) -> dict[str, list[float]]:
    """Full backups, restores and dumps, `runs` each, every output checked."""
    figures: dict[str, list[float]] = {k: [] for k in ("backup", "restore", "dump", "verify")}
    for i in range(runs):
        backup, seconds = base.take(settings, "full")
        figures["backup"].append(seconds)
        figures.setdefault("backup_repo_mb", []).append(backup.repo_size / 1e6)
        figures.setdefault("backup_size_mb", []).append(backup.size / 1e6)
        _say(f"full backup {i + 1}/{runs}: {seconds:.1f} s, {backup.repo_size / 1e6:,.0f} MB")
        into = settings.home_dir / f"restore-{i}"
        port = free_port()
        done = base.restore(settings, "latest", into, port)
        rows = asyncio.run(_restored_rows(into, port))
        base.stop_restored(into)
        shutil.rmtree(into)
        if rows != ROWS:
            raise RuntimeError(f"restore {i + 1}: {rows:,} of {ROWS:,} rows")
        figures["restore"].append(done.seconds)
        _say(f"restore {i + 1}/{runs}: {done.seconds:.1f} s, {rows:,} rows")
        made = dumps.dump(settings)
        checked = dumps.verify(settings)
        if checked.rows != sum(made.rows.values()):
            raise RuntimeError("the dump restored differently")
        figures["dump"].append(made.seconds)
        figures.setdefault("dump_mb", []).append(made.size / 1e6)
        figures["verify"].append(checked.seconds)
        _say(f"dump {i + 1}/{runs}: {made.seconds:.1f} s, {made.size / 1e6:,.0f} MB")
    return figures


def _rpo(home: Path) -> tuple[float, float]:
    """(seconds of commits lost, seconds written) in one loss of the primary at the default
    archive_timeout."""
    settings = _cluster(home)
    if settings.wal_archive_timeout != 300:
        raise RuntimeError("FLEETPULSE_WAL_ARCHIVE_TIMEOUT is set: the RPO is for the default")

    began = datetime.now(UTC)

    async def write() -> tuple[datetime, float]:
        conn = await PostgresCluster(settings).superuser_connect(settings.pg_database)
        await conn.execute(
            "CREATE TABLE drill (id bigserial PRIMARY KEY, "
            "committed_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        await asyncio.to_thread(base.take, settings, "full")
        seconds = random.uniform(RPO_MIN, RPO_MAX)  # noqa: S311 - a kill time, not a secret
        end = time.monotonic() + seconds
        last = datetime.now(UTC)
        while time.monotonic() < end:
            await conn.execute("INSERT INTO drill DEFAULT VALUES")
            last = datetime.now(UTC)
            await asyncio.sleep(0.05)
        proc = PostgresCluster(settings).process()
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        conn.terminate()
        return last, seconds

    last, seconds = asyncio.run(write())
    time.sleep(1)
    shutil.rmtree(PostgresCluster(settings).data)
    into, port = home / "latest", free_port()
    base.restore(settings, "latest", into, port)

    async def newest() -> datetime | None:
        conn = await asyncpg.connect(
            host=str(into), port=port, user="postgres", database="fleetpulse"
        )
        try:
            value: datetime | None = await conn.fetchval("SELECT max(committed_at) FROM drill")
            return value
        finally:
            await conn.close()

    recovered = asyncio.run(newest()) or began  # none recovered: every commit lost
    base.stop_restored(into)
    shutil.rmtree(home, ignore_errors=True)
    return (last - recovered).total_seconds(), seconds


def run() -> str:
    stack = stack_up()
    home = stack.home_dir / "bench" / "backup"
    settings = _cluster(home)
    try:
        started = time.monotonic()
        db_bytes = asyncio.run(_fill(settings))
        took = time.monotonic() - started
        _say(f"{ROWS:,} rows written in {took:.0f} s, {db_bytes / 1e6:,.0f} MB")
        figures = _sizes(settings, RUNS)
    finally:
        PostgresCluster(settings).stop()
        shutil.rmtree(home, ignore_errors=True)
    lost, written = _rpo(stack.home_dir / "bench" / "rpo")
    _say(f"RPO: {lost:.1f} s lost after {written:.0f} s of writes")
    db_mb = db_bytes / 1e6
    rate = [db_mb / s for s in figures["backup"]]
    restore_rate = [db_mb / s for s in figures["restore"]]
    return "\n".join(
        [
            "## Backups",
            "",
            f"A PostgreSQL 15 cluster of its own on the same machine, its database "
            f"{db_mb:,.0f} MB with {ROWS:,} `metrics_snapshots` rows ({SERVERS} servers x "
            f"{WINDOWS:,} windows); pgBackRest 2.45, zstd, aes-256-cbc, 2 processes, into a "
            f"repository on the same disk. {RUNS} runs of each; every restore checked (all "
            f"{ROWS:,} rows there), every dump verified (restored, rows and checksum as in "
            "its manifest).",
            "",
            "| Measure | Median | Range |",
            "| --- | ---: | ---: |",
            row("Full backup, s", figures["backup"], "{:.1f}"),
            row("Full backup, MB/s of the database", rate, "{:,.0f}"),
            row("Full backup in the repository, MB", figures["backup_repo_mb"], "{:,.0f}"),
            row("Restore (`latest`, started, replayed), s", figures["restore"], "{:.1f}"),
            row("Restore, MB/s of the database", restore_rate, "{:,.0f}"),
            row("Dump (`pg_dump -Fc`), s", figures["dump"], "{:.1f}"),
            row("Dump size, MB", figures["dump_mb"], "{:,.0f}"),
            row("Dump verified (restored, compared, dropped), s", figures["verify"], "{:.1f}"),
            "",
            "RPO at the default `archive_timeout` (300 s), one loss of the primary: rows "
            f"committed every 50 ms for {written:.0f} s (a random time in 5 to 10 minutes), "
            "then SIGKILL to the postmaster and its data folder deleted; `latest` restored from "
            f"the repository: **{lost:.1f} s** of commits lost (bound: 300 s plus one "
            "archive-push).",
            "",
        ]
    )


if __name__ == "__main__":
    print(run())
