"""Daily logical dumps: `pg_dump -Fc` of the database into `<home>/backups/dumps/`, one per
UTC day, the newest `FLEETPULSE_BACKUP_DUMPS_KEEP` kept.

Each dump has a manifest beside it (`<file>.json`): its SHA-256, and what the database held
in the very snapshot the dump was taken from (pg_dump reads an exported snapshot): the rows
of every table and a checksum of `metrics_snapshots` (an order-free sum of a hash of each
row). `verify` restores the newest dump into a scratch database and compares both there,
so a dump taken while the pipeline writes is checked against exactly what it holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from infra.backup.settings import BackupSettings
from infra.stack.pgbackrest import BackupError
from infra.stack.postgres import PostgresCluster
from schemas.resolutions import BASE

#: Tables of the application (partitions are counted through their parent).
_TABLES = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY 1
"""


def _checksum_sql(table: str) -> str:
    return f"SELECT coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text FROM {table} t"


@dataclass(frozen=True)
class Dump:
    """One dump file and its manifest."""

    path: str
    day: str
    size: int
    sha256: str
    taken_at: str
    seconds: float
    rows: dict[str, int] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"dump {Path(self.path).name}: {self.size / 1e6:,.1f} MB, "
            f"{sum(self.rows.values()):,} rows in {len(self.rows)} tables, taken {self.taken_at} "
            f"in {self.seconds:.1f} s, sha256 {self.sha256[:16]}…"
        )

    @classmethod
    def load(cls, manifest: Path) -> Dump:
        return cls(**json.loads(manifest.read_text()))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def _contents(conn: asyncpg.Connection) -> tuple[dict[str, int], dict[str, str]]:
    """Rows per table and the 5 s table's checksum, as `conn`'s snapshot sees them."""
    tables = [r[0] for r in await conn.fetch(_TABLES)]
    rows = {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in tables}
    checksums: dict[str, str] = {}
    snapshots = f"public.{BASE.table}"
    if snapshots in rows:
        checksums[snapshots] = await conn.fetchval(_checksum_sql(snapshots))
    return rows, checksums


def dumps(settings: BackupSettings) -> list[Dump]:
    """The dumps on disk, oldest first."""
    folder = settings.dumps
    if not folder.exists():
        return []
    return [Dump.load(m) for m in sorted(folder.glob("*.dump.json")) if m.with_suffix("").exists()]


def dump(settings: BackupSettings) -> Dump:
    """Today's dump (replacing an earlier one of today), then the oldest past the kept count
    removed."""
    folder = settings.dumps
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    now = datetime.now(UTC)
    day = now.strftime("%Y-%m-%d")
    path = folder / f"{settings.pg_database}-{day}.dump"
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    started = time.monotonic()
    try:
        rows, checksums = asyncio.run(_dump(settings, partial))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    path.chmod(0o600)
    made = Dump(
        path=str(path),
        day=day,
        size=path.stat().st_size,
        sha256=_sha256(path),
        taken_at=now.isoformat(),
        seconds=time.monotonic() - started,
        rows=rows,
        checksums=checksums,
    )
    manifest = path.with_name(path.name + ".json")
    manifest.write_text(json.dumps(asdict(made), indent=1) + "\n")
    manifest.chmod(0o600)
    for old in dumps(settings)[: -settings.backup_dumps_keep]:
        Path(old.path).unlink(missing_ok=True)
        Path(old.path + ".json").unlink(missing_ok=True)
    return made


async def _dump(settings: BackupSettings, partial: Path) -> tuple[dict[str, int], dict[str, str]]:
    """pg_dump into `partial` from an exported snapshot; what that snapshot holds."""
    cluster = PostgresCluster(settings)
    try:
        conn = await cluster.superuser_connect(settings.pg_database)
    except (OSError, asyncpg.PostgresError) as exc:
        raise BackupError(f"cannot reach the database to dump it: {exc}") from None
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            rows, checksums = await _contents(conn)
            await _run(
                cluster,
                "pg_dump",
                "-Fc",
                f"--snapshot={snapshot}",
                f"--file={partial}",
                *_where(cluster, settings.pg_database),
                timeout=settings.backup_timeout,
            )
    finally:
        await conn.close()
    return rows, checksums


def _where(cluster: PostgresCluster, database: str) -> list[str]:
    """Connection options of the PostgreSQL tools: the superuser over the private socket."""
    s = cluster.settings
    return ["-h", str(cluster.socket_dir), "-p", str(s.pg_port), "-U", "postgres", "-d", database]


async def _run(cluster: PostgresCluster, tool: str, *args: str, timeout: float) -> None:
    """One PostgreSQL client tool; `BackupError` with its message when it fails."""
    proc = await asyncio.create_subprocess_exec(
        str(cluster.bin / tool),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        raise BackupError(f"{tool} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (err or out).decode(errors="replace").splitlines() if ln.strip()]
        raise BackupError(f"{tool} failed: {'; '.join(lines[-3:]) or proc.returncode}")


@dataclass(frozen=True)
class Verified:
    """A dump restored into a scratch database and compared with its manifest."""

    dump: str
    tables: int
    rows: int
    checksums: dict[str, str]
    seconds: float

    def line(self) -> str:
        checked = f"{self.rows:,} rows in {self.tables} tables"
        if self.checksums:
            checked += f" and the {', '.join(self.checksums)} checksum"
        return (
            f"verified {Path(self.dump).name}: restored into a scratch database, {checked} as "
            f"in the source when it was dumped ({self.seconds:.1f} s); scratch database dropped"
        )

    def asdict(self) -> dict[str, Any]:
        return asdict(self)


def verify(settings: BackupSettings) -> Verified:
    """Restore the newest dump into a scratch database, compare, drop it. `BackupError`
    naming every difference when they differ."""
    return asyncio.run(_verify(settings))


async def _verify(settings: BackupSettings) -> Verified:
    found = dumps(settings)
    if not found:
        raise BackupError(f"no dump in {settings.dumps} yet: `fleetpulse backup dump`")
    newest = found[-1]
    path = Path(newest.path)
    if _sha256(path) != newest.sha256:
        raise BackupError(f"{path.name} does not match the SHA-256 in its manifest: it changed")
    cluster = PostgresCluster(settings)
    started = time.monotonic()
    scratch = f"fleetpulse_verify_{secrets.token_hex(4)}"
    admin = await cluster.superuser_connect()
    try:
        await admin.execute(f"CREATE DATABASE {scratch}")
        try:
            await _run(
                cluster,
                "pg_restore",
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                *_where(cluster, scratch),
                str(path),
                timeout=settings.backup_timeout,
            )
            conn = await cluster.superuser_connect(scratch)
            try:
                rows, checksums = await _contents(conn)
            finally:
                await conn.close()
        finally:
            await admin.execute(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")
    finally:
        await admin.close()
    differences = [
        f"{t}: {newest.rows.get(t, 'absent')} rows in the source, {rows.get(t, 'absent')} restored"
        for t in sorted(set(rows) | set(newest.rows))
        if rows.get(t) != newest.rows.get(t)
    ] + [f"{t} checksum differs" for t, c in newest.checksums.items() if checksums.get(t) != c]
    if differences:
        raise BackupError(f"{path.name} restored differently: {'; '.join(differences)}")
    return Verified(
        dump=str(path),
        tables=len(rows),
        rows=sum(rows.values()),
        checksums=checksums,
        seconds=time.monotonic() - started,
    )
