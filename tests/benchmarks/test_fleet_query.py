"""Integration: the fleet-query benchmark's short version, on the local PostgreSQL: it loads,
checks the SQL merge against Python's and times (its figures are not asserted)."""

from __future__ import annotations

import pytest

from benchmarks import fleet_query
from infra.settings import StackSettings

pytestmark = pytest.mark.integration


async def test_the_fleet_query_benchmark_checks_and_times_a_small_fleet(
    stack_settings: StackSettings,
) -> None:
    timings = await fleet_query.measure(stack_settings, servers=40, hours=24, runs=2)
    assert len(timings.hourly_ms) == len(timings.daily_ms) == 2
    assert all(t > 0 for t in timings.hourly_ms + timings.daily_ms)
