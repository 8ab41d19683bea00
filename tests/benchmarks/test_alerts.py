"""The alert benchmark's short version: the evaluation cost checks its events and times; the
delay to Alertmanager runs on the real broker, database and Alertmanager, every alert once
(figures are not asserted)."""

from __future__ import annotations

import pytest

from benchmarks import alerts
from infra.settings import StackSettings


def test_the_evaluation_benchmark_checks_and_times() -> None:
    cost = alerts.evaluation(servers=20, windows=4, rules=3, runs=2)
    assert len(cost) == 2 and all(c > 0 for c in cost)


@pytest.mark.integration
async def test_the_delay_benchmark_gets_every_alert_to_alertmanager(
    stack_settings: StackSettings,
) -> None:
    d = await alerts.delay(stack_settings, alerts=10)
    assert d.alerts == 10 and len(d.seconds) == 10
    assert all(s > 0 for s in d.seconds)
