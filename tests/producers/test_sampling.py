"""Unit tests of the agent's sampling math, with readings fed in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producers.agent.sampling import (
    NetTotals,
    NetworkDeltas,
    ProcessCpu,
    busiest,
    counter_delta,
    cpu_deltas,
    cpu_percent,
    next_tick,
    top_n,
)


def test_first_reading_gives_zero_not_the_total() -> None:
    assert counter_delta(None, 123_456_789) == 0


def test_normal_increase() -> None:
    assert counter_delta(1000, 1500) == 500
    assert counter_delta(1000, 1000) == 0


def test_32_bit_wrap_around() -> None:
    assert counter_delta(2**32 - 100, 50) == 150


def test_64_bit_wrap_around() -> None:
    assert counter_delta(2**64 - 10, 5) == 15


def test_reset_gives_zero_not_a_spike() -> None:
    # A counter that falls from mid-range is a reset (interface re-created), not a wrap.
    assert counter_delta(5_000_000, 1_000) == 0
    assert counter_delta(2**33, 10) == 0


@given(st.integers(0, 2**63), st.integers(0, 2**20))
def test_delta_recovers_the_increment(start: int, step: int) -> None:
    assert counter_delta(start, start + step) == step


def test_network_deltas_sum_interfaces_and_baseline_new_ones() -> None:
    net = NetworkDeltas()
    assert net.update({"eth0": (1000, 500)}) == NetTotals(0, 0)
    assert net.update({"eth0": (1600, 700)}) == NetTotals(600, 200)
    # A new interface contributes nothing on its first reading.
    assert net.update({"eth0": (1700, 800), "eth1": (10**9, 10**9)}) == NetTotals(100, 100)
    assert net.update({"eth0": (1800, 900), "eth1": (10**9 + 5, 10**9 + 7)}) == NetTotals(105, 107)
    # eth0 reset (driver reload): no spike; eth1 keeps counting.
    assert net.update({"eth0": (10, 20), "eth1": (10**9 + 10, 10**9 + 10)}) == NetTotals(5, 3)
    # eth1 vanished and came back: baseline again.
    assert net.update({"eth0": (20, 40)}) == NetTotals(10, 20)
    assert net.update({"eth0": (30, 50), "eth1": (7, 7)}) == NetTotals(10, 10)


@pytest.mark.parametrize(
    ("now", "interval", "expected"),
    [
        (100.0, 1.0, 101.0),  # exactly on a tick: the next one
        (100.2, 1.0, 101.0),
        (100.999, 1.0, 101.0),
        (100.2, 5.0, 105.0),
        (1_795_628_869.4, 1.0, 1_795_628_870.0),
    ],
)
def test_next_tick_is_aligned_to_the_clock(now: float, interval: float, expected: float) -> None:
    assert next_tick(now, interval) == expected


@given(st.floats(0, 4e9), st.sampled_from([0.5, 1.0, 2.0, 5.0]))
def test_next_tick_properties(now: float, interval: float) -> None:
    t = next_tick(now, interval)
    assert now < t <= now + interval + 1e-6
    assert abs(t / interval - round(t / interval)) < 1e-6


def test_cpu_deltas_skip_new_and_reused_pids() -> None:
    prev = {1: 1_000, 2: 5_000, 3: 9_000}
    cur = {1: 3_000, 2: 100, 4: 50_000}  # 2 reused (went back), 3 gone, 4 new
    assert cpu_deltas(prev, cur) == [ProcessCpu(1, 2_000)]


def test_top_n_busiest_first_ties_by_pid() -> None:
    procs = [ProcessCpu(5, 10), ProcessCpu(3, 50), ProcessCpu(9, 50), ProcessCpu(1, 0)]
    assert top_n(procs, 3) == [ProcessCpu(3, 50), ProcessCpu(9, 50), ProcessCpu(5, 10)]
    assert top_n(procs, 10) == sorted(procs, key=lambda p: (-p.cpu_ns, p.pid))
    assert top_n(procs, 0) == []


_readings = st.dictionaries(st.integers(1, 60), st.integers(0, 1_000), max_size=40)


@given(_readings, _readings, st.integers(0, 12))
def test_busiest_is_top_n_of_the_deltas(
    previous: dict[int, int], current: dict[int, int], n: int
) -> None:
    assert busiest(previous, current, n) == top_n(cpu_deltas(previous, current), n)


def test_cpu_percent_of_one_core() -> None:
    assert cpu_percent(500_000_000, 1.0) == 50.0
    assert cpu_percent(3_000_000_000, 1.0) == 300.0  # three cores busy
    assert cpu_percent(10, 0.0) == 0.0
