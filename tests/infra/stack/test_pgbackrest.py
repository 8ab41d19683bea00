"""`infra/stack/pgbackrest.py`: the stanza `stack up` sets up for the local cluster, its
encrypted repository and key, `pgbackrest check`, and a retention that bounds the archive."""

from __future__ import annotations

import asyncio
import stat

import pytest

from infra.backup import base
from infra.settings import StackSettings
from infra.stack import PostgresCluster
from infra.stack.pgbackrest import PgBackRest, Result
from infra.stack.postgres import STANZA
from tests.factories import ScratchCluster


def test_pgbackrest_errors_are_its_own_words() -> None:
    out = "P00  ERROR: [055]: unable to load info file '/r/backup.info'\n"
    assert Result(55, out, "").message == "[055]: unable to load info file '/r/backup.info'"
    assert Result(1, "P00   INFO: begin\nlast words\n", "").message == "last words"
    assert Result(3, "", "").message == "exit status 3"


@pytest.mark.integration
def test_the_stack_archives_into_an_encrypted_checked_repository(
    stack_settings: StackSettings,
) -> None:
    pg = PgBackRest(stack_settings)
    assert pg.stanza_exists()
    pg.checked("check", timeout=120)  # WAL switched, archived, found in the repository
    info = pg.info()
    assert info["cipher"] == "aes-256-cbc"
    conf = pg.config.stat()
    owner = PostgresCluster(stack_settings)._owner()
    assert (conf.st_uid, stat.S_IMODE(conf.st_mode)) == (owner.pw_uid, 0o600)
    key = pg.key_path.stat()
    assert stat.S_IMODE(key.st_mode) == 0o600
    # The key is in a file of its own under secrets/, for the cluster's user only; the main
    # configuration holds no secret.
    assert pg.key_path.read_text() not in pg.config.read_text()
    cipher = pg.secret_dir / "cipher.conf"
    assert pg.key_path.read_text() in cipher.read_text()
    held = cipher.stat()
    assert (held.st_uid, stat.S_IMODE(held.st_mode)) == (owner.pw_uid, 0o600)
    archive_command = asyncio.run(_setting(stack_settings, "archive_command"))
    assert archive_command.startswith("pgbackrest ") and "archive-push %p" in archive_command


async def _setting(settings: StackSettings, name: str) -> str:
    conn = await PostgresCluster(settings).superuser_connect()
    try:
        return str(await conn.fetchval("SELECT current_setting($1)", name))
    finally:
        await conn.close()


@pytest.mark.integration
def test_setting_up_again_changes_nothing(scratch_cluster: ScratchCluster) -> None:
    settings = scratch_cluster()
    pg = PgBackRest(settings)
    before = pg.info()["db"]
    pg.ensure()  # a second stanza-create on a matching cluster is a no-op
    assert pg.info()["db"] == before


@pytest.mark.integration
def test_expiry_shrinks_the_archive(scratch_cluster: ScratchCluster) -> None:
    settings = scratch_cluster(backup_retention_full=1)

    async def wal(segments: int) -> None:
        conn = await PostgresCluster(settings).superuser_connect()
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS churn (x text)")
            for _ in range(segments):
                await conn.execute(
                    "INSERT INTO churn SELECT repeat('x', 1000) FROM generate_series(1, 2000)"
                )
                await conn.execute("SELECT pg_switch_wal()")
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()

    def archived() -> int:
        return sum(1 for _ in settings.backup_repo.glob(f"archive/{STANZA}/*/*/*"))

    base.take(settings, "full")
    asyncio.run(wal(6))
    PgBackRest(settings).checked("check", timeout=120)
    grown = archived()
    first = base.repository(settings)
    base.take(settings, "full")  # retention 1: the first backup and the WAL it needed go
    after = base.repository(settings)
    assert [b.label for b in after.backups] != [b.label for b in first.backups]
    assert len(after.backups) == 1
    assert archived() < grown
    assert after.wal_min is not None and first.wal_min is not None
    assert after.wal_min > first.wal_min
