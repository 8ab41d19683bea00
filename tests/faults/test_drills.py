"""Integration: the fault drills (`fleetpulse drill all`), short: 500 simulated hosts as a
time-lapse across midnight, on the 3-broker stack; the stream worker, the sink, the registry,
the leader of the busiest raw partition, the active controller and the PostgreSQL postmaster
each killed with -9 in turn mid-window and started again after a pause. Afterwards every 5 s,
hourly and daily row equals the uninterrupted reference run's, and nothing was dead-lettered."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.drill import Drill, DrillOptions
from infra.faults import FAULTS
from infra.settings import StackSettings

pytestmark = pytest.mark.integration


@pytest.mark.timeout(900)  # seven faults in turn, each restarted, then the reference run
async def test_every_fault_in_turn_loses_and_duplicates_nothing(
    cluster_settings: StackSettings, tmp_path: Path
) -> None:
    lines: list[str] = []
    options = DrillOptions(hosts=500, speed=2.0, pause=5.0, logs=tmp_path)
    report = await Drill(cluster_settings, options).run(list(FAULTS), say=lines.append)
    text = "\n".join(lines)
    assert [f.fault for f in report.faults] == list(FAULTS), text
    # The run crossed midnight: an hourly and a daily row per host were closed by the load.
    assert report.expected["metrics_hourly"] >= 500 and report.expected["metrics_daily"] == 500
    assert report.expected["metrics_snapshots"] >= 500 * 30, text
    assert report.passed, text
    assert all(0 < f.recovery < 240 for f in report.faults), text
