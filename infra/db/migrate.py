"""Applies the SQL migrations in `infra/db/sql/` in order, once each.

A migration is `NNNN_name.sql` (every storage mode) or a pair `NNNN_name.postgres.sql` /
`NNNN_name.timescaledb.sql` (one per mode). Each runs in its own transaction and is recorded
in `schema_migrations` with a checksum; a session-level advisory lock makes concurrent runs
(two processes starting at once) apply each migration exactly once. The storage mode is chosen
once, on the first run, and kept. Before anything is applied, the migrations are checked
against the resolutions table (`schemas/resolutions.py`): every resolution's table must be
created by one of them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncpg

from runtime.errors import FleetPulseError
from schemas import RESOLUTIONS, ResolutionSpec

SQL_DIR = Path(__file__).parent / "sql"
#: Advisory lock key of the migration runner ("fleetpulse" → a fixed 63-bit number).
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"fleetpulse.migrate").digest()[:8], "big") >> 1
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(postgres|timescaledb))?\.sql$")
_CREATE_TABLE = re.compile(r'CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?"?(\w+)"?', re.IGNORECASE)

StorageMode = Literal["postgres", "timescaledb"]


class MigrationError(FleetPulseError):
    """The migrations cannot be applied as they are; the message says why."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    variant: str  # "all", "postgres" or "timescaledb"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationReport:
    mode: StorageMode
    applied: list[Migration]
    already: int


def load_migrations(mode: StorageMode, directory: Path = SQL_DIR) -> list[Migration]:
    """The migrations for a storage mode, in version order."""
    by_version: dict[int, dict[str, Migration]] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: not a migration name (NNNN_name[.mode].sql)")
        version, name, variant = int(m.group(1)), m.group(2), m.group(3) or "all"
        by_version.setdefault(version, {})[variant] = Migration(
            version, name, variant, path.read_text()
        )
    out = []
    for version in sorted(by_version):
        variants = by_version[version]
        if "all" in variants and len(variants) > 1:
            raise MigrationError(f"migration {version:04d} has both a common and a per-mode file")
        if "all" not in variants and set(variants) != {"postgres", "timescaledb"}:
            raise MigrationError(f"migration {version:04d} needs both .postgres and .timescaledb")
        out.append(variants.get("all") or variants[mode])
    return out


def missing_tables(
    migrations: Iterable[Migration], table: Iterable[ResolutionSpec] = RESOLUTIONS
) -> list[str]:
    """The tables of the resolutions in `table` that none of `migrations` creates."""
    created = {name for m in migrations for name in _CREATE_TABLE.findall(m.sql)}
    return [r.table for r in table if r.table not in created]


def check_migrations(migrations: list[Migration], mode: StorageMode) -> list[Migration]:
    """`migrations` if they create every resolution's table; else a `MigrationError`."""
    missing = missing_tables(migrations)
    if missing:
        raise MigrationError(
            f"the resolutions table names {', '.join(missing)}, which no {mode} migration "
            "creates: add a migration for it"
        )
    return migrations


async def detect_mode(conn: asyncpg.Connection) -> StorageMode:
    """`timescaledb` when the extension can be created in this database, else `postgres`."""
    available = await conn.fetchval(
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    return "timescaledb" if available else "postgres"


async def migrate(
    conn: asyncpg.Connection,
    storage: Literal["auto", "postgres", "timescaledb"] = "auto",
    directory: Path = SQL_DIR,
) -> MigrationReport:
    """Apply what is missing. Safe to run twice and from two processes at once."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    INTEGER PRIMARY KEY,
                name       TEXT NOT NULL,
                variant    TEXT NOT NULL,
                checksum   TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )
            """
        )
        rows = await conn.fetch("SELECT version, name, variant, checksum FROM schema_migrations")
        done = {r["version"]: r for r in rows}
        recorded = {r["variant"] for r in rows} - {"all"}
        if len(recorded) > 1:
            raise MigrationError(f"schema_migrations mixes storage modes: {sorted(recorded)}")
        mode: StorageMode
        if recorded:
            mode = "timescaledb" if recorded == {"timescaledb"} else "postgres"
            if storage not in ("auto", mode):
                raise MigrationError(
                    f"this database was migrated for storage mode {mode!r}; "
                    f"it cannot be switched to {storage!r}"
                )
        elif storage == "auto":
            mode = await detect_mode(conn)
        else:
            mode = storage

        applied = []
        for mig in check_migrations(load_migrations(mode, directory), mode):
            row = done.get(mig.version)
            if row is not None:
                if row["checksum"] != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.version:04d}_{mig.name} changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, variant, checksum) "
                    "VALUES ($1, $2, $3, $4)",
                    mig.version,
                    mig.name,
                    mig.variant,
                    mig.checksum,
                )
            applied.append(mig)
        return MigrationReport(mode=mode, applied=applied, already=len(done))
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
