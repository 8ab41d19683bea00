"""`fleetpulse backup schedule`: backups on a timetable, as a service of the common runtime.

Every day at `FLEETPULSE_BACKUP_DAILY_AT` (UTC): a full base backup, then the day's dump; every
`FLEETPULSE_BACKUP_DIFF_EVERY` hours since the newest backup: a differential one. A schedule
that finds a run missed (first start, or the machine was off at that time) runs it at once.
pgBackRest applies the retention after each backup; the dumps past their count are removed
after each dump. A failed run is logged with pgBackRest's own message and retried with the
common backoff; /metrics carries the age of the newest good backup and of the last archived
WAL segment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Literal

from prometheus_client import Gauge

from infra.backup import base, dumps
from infra.backup.settings import BackupSettings
from runtime.backoff import Backoff
from runtime.errors import FleetPulseError
from runtime.service import Service
from runtime.telemetry import telemetry

log = logging.getLogger("fleetpulse.backup")

TELEMETRY = telemetry("backup")
BACKUP_AGE = Gauge(
    "fleetpulse_backup_last_backup_age_seconds",
    "Seconds since the newest good base backup ended (NaN: none yet).",
)
WAL_AGE = Gauge(
    "fleetpulse_backup_last_archived_wal_age_seconds",
    "Seconds since the cluster last archived a WAL segment (NaN: none, or not running).",
)


@dataclass(frozen=True)
class Due:
    """The next run: what, and when."""

    #: "full" (then the day's dump), "dump" (the day's, alone) or "diff".
    job: Literal["full", "dump", "diff"]
    at: datetime


def next_due(
    settings: BackupSettings,
    now: datetime,
    last_full: datetime | None,
    last_any: datetime | None,
    last_dump: datetime | None,
) -> Due:
    """The next run after the newest full backup `last_full`, the newest backup of any type
    `last_any` and the newest dump `last_dump` (None: none yet); a missed one is due now."""
    today = datetime.combine(now.date(), settings.backup_daily_at, tzinfo=UTC)
    slot = today if today <= now else today - timedelta(days=1)  # the latest daily time passed
    if last_full is None or last_full < slot:
        return Due("full", now)
    if last_dump is None or last_dump < slot:
        return Due("dump", now)
    daily = Due("full", slot + timedelta(days=1))
    if settings.backup_diff_every <= 0 or last_any is None:
        return daily
    diff = Due("diff", max(now, last_any + timedelta(hours=settings.backup_diff_every)))
    return diff if diff.at < daily.at else daily


def _time(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


class BackupSchedule(Service):
    """Takes the backups when they are due, until stopped."""

    name = "backup"

    def __init__(self, settings: BackupSettings) -> None:
        super().__init__()
        self.settings = settings
        self.backoff = Backoff(
            settings.retry_min, settings.retry_max, probe_every=settings.retry_probe_every
        )
        self.pgbackrest = TELEMETRY.outage("pgbackrest", log)
        TELEMETRY.declare(outputs=("full", "diff", "dump"), kinds=("backup", "dump"))
        self.last_backup: datetime | None = None
        self.last_wal: datetime | None = None
        BACKUP_AGE.set_function(lambda: _age(self.last_backup))
        WAL_AGE.set_function(lambda: _age(self.last_wal))

    async def _state(self) -> tuple[datetime | None, datetime | None, datetime | None]:
        repo = await asyncio.to_thread(partial(base.repository, self.settings, size=False))
        fulls = [b for b in repo.backups if b.type == "full"]
        found = await asyncio.to_thread(dumps.dumps, self.settings)
        self.last_backup = _time(repo.backups[-1].stopped) if repo.backups else None
        self.last_wal = _time(repo.latest)
        return (
            _time(fulls[-1].stopped) if fulls else None,
            self.last_backup,
            _time(found[-1].taken_at) if found else None,
        )

    async def _run(self, job: Literal["full", "dump", "diff"]) -> None:
        if job == "full" or job == "diff":
            backup, seconds = await asyncio.to_thread(base.take, self.settings, job)
            log.info("%s (%.1f s)", backup.line(), seconds)
            TELEMETRY.sent.labels(output=job).inc()
        if job in ("full", "dump"):
            made = await asyncio.to_thread(dumps.dump, self.settings)
            log.info("%s", made.line())
            TELEMETRY.sent.labels(output="dump").inc()

    async def run(self) -> None:
        log.info(
            "backups: full and dump daily at %s UTC, differential every %g h; repository %s",
            self.settings.backup_daily_at.strftime("%H:%M"),
            self.settings.backup_diff_every,
            self.settings.backup_repo,
        )
        while not self.stopping.is_set():
            try:
                due = next_due(self.settings, datetime.now(UTC), *await self._state())
                wait = (due.at - datetime.now(UTC)).total_seconds()
                if wait > 0:
                    log.info("next: %s backup at %s", due.job, due.at.isoformat())
                    # Wake at least every minute: the gauges and the repository move on.
                    await self._sleep(min(wait, 60.0))
                    continue
                started = time.monotonic()
                await self._run(due.job)
                TELEMETRY.batch_seconds.observe(time.monotonic() - started)
                self.pgbackrest.ok()
                self.backoff.reset()
            except FleetPulseError as exc:
                TELEMETRY.errors.labels(kind="backup").inc()
                self.pgbackrest.failed(str(exc), detail="retrying")
                await self.backoff.wait(stop=self.stopping)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            return


def _age(at: datetime | None) -> float:
    return float("nan") if at is None else (datetime.now(UTC) - at).total_seconds()
