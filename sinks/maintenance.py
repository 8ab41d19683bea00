"""Retention and partitions: `fleetpulse db maintain`, and periodically inside the sink.

On plain PostgreSQL it creates the partitions ahead of today and drops those wholly past
retention, through the owner's SECURITY DEFINER functions (`fleetpulse_ensure_partitions`,
`fleetpulse_drop_partitions`, migration 0005): the sink's role can run them but can neither
create nor drop a table itself. On TimescaleDB the migrations installed retention and
compression policies that TimescaleDB runs itself; maintenance only checks that they exist (it
never adds a second one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from schemas import RESOLUTIONS
from schemas.resolutions import BASE
from sinks.settings import SinkSettings


@dataclass
class MaintenanceReport:
    mode: str
    created: int = 0
    dropped: list[str] = field(default_factory=list)
    late_deleted: int = 0
    policies: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.mode == "timescaledb":
            text = f"TimescaleDB policies present: {', '.join(self.policies) or 'none'}"
            return text + (f"; MISSING: {', '.join(self.missing)}" if self.missing else "")
        dropped = ", ".join(self.dropped) or "none"
        return (
            f"{self.created} partitions created ahead, dropped past retention: {dropped}; "
            f"{self.late_deleted} late-sample records past retention deleted"
        )


async def storage_mode(conn: asyncpg.Connection) -> str:
    """The mode the migrations were applied in (`postgres` or `timescaledb`)."""
    mode = await conn.fetchval(
        "SELECT variant FROM schema_migrations WHERE variant <> 'all' ORDER BY version LIMIT 1"
    )
    if mode is None:
        raise RuntimeError("the database is not migrated: run `fleetpulse db migrate`")
    return str(mode)


async def maintain(
    conn: asyncpg.Connection, settings: SinkSettings, now: datetime | None = None
) -> MaintenanceReport:
    """Run one round of maintenance as of `now` (default: the clock)."""
    now = now or datetime.now(UTC)
    mode = await storage_mode(conn)
    report = MaintenanceReport(mode=mode)
    # Late samples are kept as long as the 5 s rows they are counted against.
    days = settings.retention_days[BASE.name]
    if days:
        status = await conn.execute(
            'DELETE FROM late_samples WHERE "timestamp" < $1', now - timedelta(days=days)
        )
        report.late_deleted = int(status.split()[-1])
    if mode == "timescaledb":
        await _check_policies(conn, settings, report)
        return report
    ahead = now + timedelta(days=settings.partitions_ahead_days)
    async with conn.transaction():
        await conn.execute("SET LOCAL TimeZone = 'UTC'")
        for r in RESOLUTIONS:
            days = settings.retention_days[r.name]
            since = now - timedelta(days=days) if days else now - timedelta(days=1)
            report.created += await conn.fetchval(
                "SELECT fleetpulse_ensure_partitions($1::regclass, $2, $3, $4)",
                r.table,
                r.partition_unit,
                since,
                ahead,
            )
            if days:
                report.dropped += await _drop_before(conn, r.table, now - timedelta(days=days))
    return report


async def _drop_before(conn: asyncpg.Connection, table: str, cutoff: datetime) -> list[str]:
    """Drop the partitions of `table` whose upper bound is at or before `cutoff`."""
    rows = await conn.fetch(
        "SELECT name FROM fleetpulse_drop_partitions($1::regclass, $2) AS name", table, cutoff
    )
    return sorted(r["name"] for r in rows)


async def _check_policies(
    conn: asyncpg.Connection, settings: SinkSettings, report: MaintenanceReport
) -> None:
    rows = await conn.fetch(
        "SELECT hypertable_name, proc_name FROM timescaledb_information.jobs "
        "WHERE hypertable_name IS NOT NULL"
    )
    present = {(r["hypertable_name"], r["proc_name"]) for r in rows}
    report.policies = sorted(f"{t}:{p.removeprefix('policy_')}" for t, p in present)
    # Every table with a retention has its retention policy; the 5 s rows are compressed.
    wanted = []
    for r in RESOLUTIONS:
        if settings.retention_days[r.name]:
            wanted.append((r.table, "policy_retention"))
        if r is BASE:
            wanted.append((r.table, "policy_compression"))
    report.missing = [
        f"{t}:{p.removeprefix('policy_')}" for t, p in wanted if (t, p) not in present
    ]
