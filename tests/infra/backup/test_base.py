"""Integration drills of `infra/backup/base.py` against a real PostgreSQL 15 and pgBackRest:
a restore to a point in time gives back exactly the rows committed up to it; the loss of the
primary loses at most `archive_timeout` of commits; every bad request is one clear line and
changes nothing."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from infra.backup import base
from infra.backup.settings import BackupSettings
from infra.cli import main
from infra.stack import PostgresCluster
from infra.stack.pgbackrest import BackupError
from infra.stack.postgres import STANZA
from infra.stack.process import free_port
from tests.factories import ScratchCluster

pytestmark = pytest.mark.integration

#: archive-push of the segment archive_timeout closed takes this long at most, here; the
#: commits of that moment are in neither the old segment nor the archive yet.
PUSH_SLACK = 2.0


async def _db(settings: BackupSettings) -> asyncpg.Connection:
    return await PostgresCluster(settings).superuser_connect(settings.pg_database)


async def _restored(into: Path, port: int, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(host=str(into), port=port, user="postgres", database="fleetpulse")
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


async def _write_batch(conn: asyncpg.Connection, batch: int, rows: int = 100) -> datetime:
    """`rows` rows of `batch` in one transaction; its commit time (after the commit)."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO drill (batch, n) SELECT $1, g FROM generate_series(1, $2) g", batch, rows
        )
    return datetime.now(UTC)


async def _create_table(settings: BackupSettings) -> None:
    conn = await _db(settings)
    try:
        await conn.execute(
            "CREATE TABLE drill (id bigserial PRIMARY KEY, batch int NOT NULL, n int NOT NULL, "
            "committed_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
    finally:
        await conn.close()


def test_restore_to_a_point_in_time_gives_exactly_the_rows_up_to_it(
    scratch_cluster: ScratchCluster, tmp_path: Path
) -> None:
    settings = scratch_cluster()
    asyncio.run(_create_table(settings))

    async def before_backup() -> None:
        conn = await _db(settings)
        try:
            await _write_batch(conn, 1)
        finally:
            await conn.close()

    async def after_backup() -> datetime:
        conn = await _db(settings)
        try:
            await _write_batch(conn, 2)
            await _write_batch(conn, 3)
            await asyncio.sleep(1.0)
            target = datetime.now(UTC)  # between batch 3's commit and batch 4's
            await asyncio.sleep(1.0)
            await _write_batch(conn, 4)
            await _write_batch(conn, 5)
            return target
        finally:
            await conn.close()

    asyncio.run(before_backup())
    backup, _ = base.take(settings, "full")
    time.sleep(1.0)  # a target in the second the backup ended is before it
    target = asyncio.run(after_backup())

    into, port = tmp_path / "pitr", free_port()
    done = base.restore(settings, target.isoformat(), into, port)
    assert done.backup == backup.label
    assert not done.writable  # paused at the target, for inspection
    rows = asyncio.run(
        _restored(into, port, "SELECT batch, count(*) AS n FROM drill GROUP BY 1 ORDER BY 1")
    )
    assert [(r["batch"], r["n"]) for r in rows] == [(1, 100), (2, 100), (3, 100)]
    assert done.last_transaction is not None
    assert datetime.fromisoformat(done.last_transaction) <= target
    assert base.stop_restored(into)

    # --promote: the same point, then writable.
    into2, port2 = tmp_path / "pitr2", free_port()
    promoted = base.restore(settings, target.isoformat(), into2, port2, promote=True)
    assert promoted.writable
    asyncio.run(_restored(into2, port2, "INSERT INTO drill (batch, n) VALUES (9, 1) RETURNING id"))


def test_loss_of_the_primary_loses_at_most_archive_timeout(
    scratch_cluster: ScratchCluster, tmp_path: Path
) -> None:
    timeout = 8
    settings = scratch_cluster(wal_archive_timeout=timeout)
    asyncio.run(_create_table(settings))
    base.take(settings, "full")

    async def write_until_killed() -> datetime:
        """A row every 50 ms; kill -9 the postmaster 3 archive_timeouts in; the last commit
        acknowledged."""
        cluster = PostgresCluster(settings)
        conn = await _db(settings)
        last = datetime.now(UTC)
        end = time.monotonic() + 3 * timeout + 1.7
        try:
            while time.monotonic() < end:
                last = await _write_batch(conn, 1, rows=1)
                await asyncio.sleep(0.05)
            proc = cluster.process()
            assert proc is not None
            os.kill(proc.pid, signal.SIGKILL)
            await asyncio.sleep(0.5)
        finally:
            conn.terminate()
        return last

    last_commit = asyncio.run(write_until_killed())
    cluster = PostgresCluster(settings)
    assert cluster.process() is None
    # Its data folder, and the rest of its folder with it: TLS files, pgBackRest's
    # configuration and log. The repository and the key (`<home>/secrets`) remain.
    shutil.rmtree(cluster.dir)

    into, port = tmp_path / "latest", free_port()
    done = base.restore(settings, "latest", into, port)
    (recovered,) = asyncio.run(_restored(into, port, "SELECT max(committed_at) AS t FROM drill"))
    lost = (last_commit - recovered["t"]).total_seconds()
    assert 0 <= lost <= timeout + PUSH_SLACK, (lost, done)
    assert done.last_transaction is not None


def _fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one line a failing `fleetpulse` command prints."""
    assert main(list(argv)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("fleetpulse: error: ")
    return err[0]


def test_bad_restores_are_one_line_and_change_nothing(
    scratch_cluster: ScratchCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = scratch_cluster()
    monkeypatch.setenv("FLEETPULSE_HOME", str(settings.home))
    monkeypatch.setenv("FLEETPULSE_PG_PORT", str(settings.pg_port))
    asyncio.run(_create_table(settings))
    base.take(settings, "full")
    time.sleep(1.0)  # a target in the second the backup ended is before it
    first = base.repository(settings).earliest
    assert first is not None
    restore = ["backup", "restore", "--port", str(free_port())]

    # Before the earliest point a restore reaches.
    early = (datetime.fromisoformat(first) - timedelta(hours=1)).isoformat()
    line = _fails(capsys, *restore, "--to", early, "--into", str(tmp_path / "early"))
    assert "before the earliest point" in line
    assert not (tmp_path / "early").exists()

    # Into a folder that holds something; onto a port that is taken.
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    line = _fails(capsys, *restore, "--to", "latest", "--into", str(full))
    assert "not an empty folder" in line
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    taken = ["backup", "restore", "--port", str(settings.pg_port), "--to", "latest"]
    line = _fails(capsys, *taken, "--into", str(tmp_path / "taken"))
    assert "is taken" in line
    assert not (tmp_path / "taken").exists()

    # A WAL segment the restore needs, moved out of the repository.
    async def write_past_a_segment() -> datetime:
        conn = await _db(settings)
        try:
            await _write_batch(conn, 1)
            await conn.execute("SELECT pg_switch_wal()")
            await _write_batch(conn, 2)
            await conn.execute("SELECT pg_switch_wal()")
            target = await _write_batch(conn, 3)
            await conn.execute("SELECT pg_switch_wal()")
            await asyncio.sleep(0.5)
            return target
        finally:
            await conn.close()

    target = asyncio.run(write_past_a_segment())
    backup = base.repository(settings).backups[-1]
    archive = sorted(settings.backup_repo.glob(f"archive/{STANZA}/*/*/*"))
    later = [p for p in archive if p.name[:24] > backup.wal_stop]
    assert later, archive
    aside = tmp_path / later[0].name
    shutil.move(later[0], aside)
    line = _fails(capsys, *restore, "--to", target.isoformat(), "--into", str(tmp_path / "gap"))
    assert "did not recover" in line and later[0].name[:24] in line, line
    assert not (tmp_path / "gap").exists()
    shutil.move(aside, later[0])

    # A wrong repository key: pgBackRest's own refusal.
    key = settings.home_dir / "secrets" / "pgbackrest_key"
    right = key.read_text()
    key.write_text("not-the-key")
    try:
        line = _fails(capsys, "backup", "list")
        assert "pgbackrest info" in line
        line = _fails(capsys, *restore, "--to", "latest", "--into", str(tmp_path / "key"))
        assert not (tmp_path / "key").exists()
    finally:
        key.write_text(right)
    assert main(["backup", "list"]) == 0


def test_a_restore_target_must_be_a_time_or_latest() -> None:
    assert base.parse_target("latest") is None
    assert base.parse_target("2026-12-01T10:00:00") == datetime(2026, 12, 1, 10, tzinfo=UTC)
    with pytest.raises(BackupError, match="neither `latest` nor an ISO 8601 time"):
        base.parse_target("yesterday")
