"""Integration: `infra/backup/dumps.py`: the day's `pg_dump -Fc` with its manifest, seven
kept, and `verify`, which restores the newest into a scratch database and compares it."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from infra.backup import dumps
from infra.backup.settings import BackupSettings
from infra.cli import main
from infra.db import migrate
from infra.stack import PostgresCluster
from infra.stack.pgbackrest import BackupError
from tests.factories import ScratchCluster, fill_snapshots

pytestmark = pytest.mark.integration

CHECKSUM = "SELECT coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text FROM {} t"


async def _fill(settings: BackupSettings) -> tuple[int, str]:
    """A migrated database with 2,000 rows of 5 s data; (rows, checksum) of the table."""
    conn = await PostgresCluster(settings).superuser_connect(settings.pg_database)
    try:
        await migrate(conn)
        inserted = await fill_snapshots(conn, servers=20, windows=100)
        checksum = await conn.fetchval(CHECKSUM.format("metrics_snapshots"))
        return inserted, checksum
    finally:
        await conn.close()


def test_a_dump_restores_to_the_same_rows_and_checksum(
    scratch_cluster: ScratchCluster,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = scratch_cluster()
    inserted, checksum = asyncio.run(_fill(settings))
    assert inserted == 2000

    made = dumps.dump(settings)
    path = Path(made.path)
    assert path.parent == settings.dumps and path.name.endswith(f"{made.day}.dump")
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert made.rows["public.metrics_snapshots"] == 2000
    assert made.rows["public.servers"] == 20
    assert made.checksums == {"public.metrics_snapshots": checksum}
    manifest = json.loads(Path(made.path + ".json").read_text())
    assert manifest["sha256"] == made.sha256 and manifest["rows"] == made.rows

    done = dumps.verify(settings)
    assert done.rows == sum(made.rows.values()) and done.checksums == made.checksums

    # The same through the command line, one line each; the scratch database is gone.
    monkeypatch.setenv("FLEETPULSE_HOME", str(settings.home))
    monkeypatch.setenv("FLEETPULSE_PG_PORT", str(settings.pg_port))
    assert main(["backup", "verify"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"verified {path.name}: ")
    assert main(["backup", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [d["sha256"] for d in listed["dumps"]] == [made.sha256]
    assert asyncio.run(_databases(settings)) == {"fleetpulse", "postgres"}


async def _databases(settings: BackupSettings) -> set[str]:
    conn = await PostgresCluster(settings).superuser_connect()
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE NOT datistemplate")
        return {r["datname"] for r in rows}
    finally:
        await conn.close()


def test_seven_days_kept_and_a_changed_dump_refused(scratch_cluster: ScratchCluster) -> None:
    settings = scratch_cluster()
    asyncio.run(_fill(settings))
    made = dumps.dump(settings)
    # Nine earlier days, as earlier runs would have left them.
    for day in range(1, 10):
        name = f"{settings.pg_database}-2026-11-{day:02d}.dump"
        shutil.copy(made.path, settings.dumps / name)
        manifest = json.loads(Path(made.path + ".json").read_text())
        manifest.update(path=str(settings.dumps / name), day=f"2026-11-{day:02d}")
        (settings.dumps / f"{name}.json").write_text(json.dumps(manifest))
    again = dumps.dump(settings)  # today's again: replaces it, then prunes
    kept = [d.day for d in dumps.dumps(settings)]
    assert kept == [f"2026-11-{d:02d}" for d in range(4, 10)] + [again.day]
    assert sorted(p.name for p in settings.dumps.iterdir()) == sorted(
        n for d in dumps.dumps(settings) for n in (Path(d.path).name, Path(d.path).name + ".json")
    )

    with Path(again.path).open("r+b") as f:
        f.seek(100)
        f.write(b"\0" * 16)
    with pytest.raises(BackupError, match="does not match the SHA-256 in its manifest"):
        dumps.verify(settings)


def test_verify_without_a_dump_says_so(tmp_path: Path) -> None:
    settings = BackupSettings(home=tmp_path)
    with pytest.raises(BackupError, match=r"no dump in .* yet: `fleetpulse backup dump`"):
        dumps.verify(settings)
