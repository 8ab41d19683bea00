"""`infra/backup/schedule.py`: when each run is due, and the service taking them against a
real cluster, with its gauges, retries and clean stop."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from infra.backup import base, dumps
from infra.backup.schedule import BackupSchedule, Due, next_due
from infra.backup.settings import BackupSettings
from runtime.service import serve
from tests.factories import ScratchCluster

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAILY = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)  # today's 01:00, passed


def _settings(**overrides: Any) -> BackupSettings:
    return BackupSettings(**{"backup_daily_at": time(1, 0), "backup_diff_every": 6.0, **overrides})


def test_an_empty_repository_gets_a_full_backup_at_once() -> None:
    assert next_due(_settings(), NOW, None, None, None) == Due("full", NOW)


def test_a_missed_daily_run_is_taken_at_once() -> None:
    yesterday = DAILY - timedelta(hours=2)
    assert next_due(_settings(), NOW, yesterday, yesterday, DAILY) == Due("full", NOW)
    # The backup of today is there, its dump is not (it failed): the dump alone.
    assert next_due(_settings(), NOW, DAILY, DAILY, yesterday) == Due("dump", NOW)


def test_differentials_between_the_daily_runs() -> None:
    s = _settings()
    after_daily = DAILY + timedelta(minutes=5)
    assert next_due(s, NOW, after_daily, after_daily, after_daily) == Due("diff", NOW)
    recent = NOW - timedelta(hours=1)
    assert next_due(s, NOW, after_daily, recent, after_daily) == Due(
        "diff", recent + timedelta(hours=6)
    )
    # A differential that would fall after the next daily run gives way to it.
    late = NOW.replace(hour=22)
    assert next_due(s, late, after_daily, late, after_daily) == Due(
        "full", DAILY + timedelta(days=1)
    )
    # No differentials: the next daily run.
    assert next_due(_settings(backup_diff_every=0), NOW, after_daily, recent, after_daily) == Due(
        "full", DAILY + timedelta(days=1)
    )


def test_before_today_s_time_yesterday_s_run_counts() -> None:
    early = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)  # before today's 01:00
    last_night = datetime(2026, 11, 30, 1, 10, tzinfo=UTC)
    due = next_due(_settings(backup_diff_every=0), early, last_night, last_night, last_night)
    assert due == Due("full", DAILY)


async def _until(check: Callable[[], bool]) -> None:
    """Poll `check` (the caller bounds the wait)."""
    while True:
        if check():
            return
        await asyncio.sleep(0.2)


def _gauge(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, name
    return value


@pytest.mark.integration
async def test_the_schedule_takes_what_is_due_retries_and_stops(
    scratch_cluster: ScratchCluster, caplog: pytest.LogCaptureFixture
) -> None:
    settings = await asyncio.to_thread(scratch_cluster, retry_min=0.2, retry_max=1.0)
    key = settings.home_dir / "secrets" / "pgbackrest_key"
    right = key.read_text()
    key.write_text("wrong")  # the first attempts fail with pgBackRest's own message
    service = BackupSchedule(settings)
    task = asyncio.create_task(serve(service, stop_timeout=30))
    caplog.set_level(logging.INFO, logger="fleetpulse.backup")
    async with asyncio.timeout(120):
        await _until(
            lambda: any("pgbackrest unavailable" in r.getMessage() for r in caplog.records)
        )
        key.write_text(right)
        await _until(lambda: bool(dumps.dumps(settings)))  # the full backup, the day's dump
        await _until(lambda: not math.isnan(_gauge("fleetpulse_backup_last_backup_age_seconds")))
    failure = next(r.getMessage() for r in caplog.records if "unavailable" in r.getMessage())
    assert "pgbackrest info" in failure  # pgBackRest's words, not a traceback
    repo = await asyncio.to_thread(base.repository, settings)
    assert [b.type for b in repo.backups] == ["full"]
    assert REGISTRY.get_sample_value("fleetpulse_backup_errors_total", {"kind": "backup"})
    assert REGISTRY.get_sample_value("fleetpulse_backup_sent_total", {"output": "full"})
    assert REGISTRY.get_sample_value("fleetpulse_backup_sent_total", {"output": "dump"})
    service.stop()
    assert await task == 0
    age = _gauge("fleetpulse_backup_last_backup_age_seconds")
    assert not math.isnan(age) and 0 <= age < 120
    wal = _gauge("fleetpulse_backup_last_archived_wal_age_seconds")
    assert not math.isnan(wal) and wal >= 0
