"""Unit tests (hypothesis) of the windowing math: cascade equals direct aggregation, lateness,
out-of-order events within grace, exactly-once closing, replay safety."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import RawMetricEvent, Resolution, WindowAggregate
from streams.windows import Grace, PartitionWindows, WindowAcc

T0 = datetime(2026, 11, 25, 22, 0, tzinfo=UTC)  # two hours before a day boundary
SERVERS = ["6f1c2a8e-4b7d-4e0a-9c35-0d2f5b8e91a4", "0b6f6d8e-2f55-4c59-9a1c-6a8f3f4e7c21"]
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def ev(server: int, seconds: float, cpu: float = 10.0, rx: int = 100) -> RawMetricEvent:
    return RawMetricEvent(
        server_id=SERVERS[server],
        timestamp=T0 + timedelta(seconds=seconds),
        cpu_usage=cpu,
        memory_usage=50.0,
        disk_usage=60.0,
        network_rx=rx,
        network_tx=rx // 2,
    )


def aggregate_directly(
    events: Iterable[RawMetricEvent], resolution: Resolution
) -> dict[tuple[str, int], tuple[int, float, float, float, int, int]]:
    """The reference: (server, window start) → (count, cpu sum, cpu min, cpu max, rx, tx)."""
    out: dict[tuple[str, int], tuple[int, float, float, float, int, int]] = {}
    size = resolution.seconds
    for e in events:
        key = (e.server_id, int(e.timestamp.timestamp() // size) * size)
        c, s, lo, hi, rx, tx = out.get(key, (0, 0.0, math.inf, -math.inf, 0, 0))
        out[key] = (
            c + 1,
            s + e.cpu_usage,
            min(lo, e.cpu_usage),
            max(hi, e.cpu_usage),
            rx + e.network_rx,
            tx + e.network_tx,
        )
    return out


events_strategy = st.lists(
    st.tuples(
        st.integers(0, 1),
        st.floats(0, 3 * 3600, allow_nan=False),
        st.floats(0, 100, allow_nan=False),
        st.integers(0, 10**9),
    ),
    min_size=1,
    max_size=300,
).map(lambda xs: sorted(xs, key=lambda x: x[1]))


def closed(w: PartitionWindows) -> list[WindowAggregate]:
    """What `close()` emits, as a consumer of the aggregate topics reads it. The JSON written
    directly must equal the validated model built field by field."""
    out = []
    for c in w.close(NOW):
        message = c.message()
        assert message == c.acc.to_aggregate(c.resolution, NOW)
        out.append(message)
    return out


@settings(max_examples=60, deadline=None)
@given(events_strategy)
def test_cascade_equals_direct_aggregation(raw: list[tuple[int, float, float, int]]) -> None:
    events = [ev(s, t, cpu, rx) for s, t, cpu, rx in raw]
    w = PartitionWindows()
    emitted: list[WindowAggregate] = []
    for e in events:
        assert w.add(e)
        emitted += closed(w)
    w.advance_to(math.inf)
    emitted += closed(w)
    for resolution in Resolution:
        expected = aggregate_directly(events, resolution)
        got = {
            (a.server_id, int(a.window_start.timestamp())): a
            for a in emitted
            if a.resolution is resolution
        }
        assert len(got) == len([a for a in emitted if a.resolution is resolution])  # once each
        assert set(got) == set(expected)
        for key, (count, total, lo, hi, rx, tx) in expected.items():
            a = got[key]
            assert a.count == count
            assert a.cpu_usage.avg == pytest.approx(min(100.0, total / count), rel=1e-9, abs=1e-9)
            assert (a.cpu_usage.min, a.cpu_usage.max) == (lo, hi)
            assert (a.network_rx, a.network_tx) == (rx, tx)


def test_out_of_order_within_grace_is_kept_and_last_is_by_event_time() -> None:
    w = PartitionWindows()
    assert w.add(ev(0, 1.0, cpu=10))
    assert w.add(ev(0, 8.0, cpu=30))  # watermark 8: window [0,5) closes at 10
    assert w.add(ev(0, 4.0, cpu=20))  # older, but its window is still open
    assert closed(w) == []
    w.add(ev(0, 10.5))
    [five] = closed(w)
    assert five.count == 2 and five.cpu_usage.avg == 15.0
    assert five.cpu_usage.last == 20  # the event with the latest timestamp, not the last to arrive
    assert five.window_start == T0 and five.window_end == T0 + timedelta(seconds=5)


def test_late_events_are_refused_and_counted() -> None:
    w = PartitionWindows(Grace(five_seconds=2.0))
    w.add(ev(0, 0.5))
    w.add(ev(0, 7.0))  # watermark 7 = end 5 + grace 2: window [0,5) closes
    emitted = closed(w)
    assert [a.window_start for a in emitted] == [T0]
    assert not w.add(ev(0, 3.0))
    assert not w.add(ev(1, 4.9))  # any server: the partition's event time decides
    assert w.add(ev(0, 5.0))
    assert w.late == 2


def test_wall_clock_closes_an_idle_partition() -> None:
    w = PartitionWindows()
    w.add(ev(0, 1.0))
    assert closed(w) == []
    w.advance_to((T0 + timedelta(seconds=10)).timestamp())
    assert [a.resolution for a in closed(w)] == [Resolution.FIVE_SECONDS]
    w.advance_to((T0 + timedelta(hours=1, seconds=5)).timestamp())
    assert [a.resolution for a in closed(w)] == [Resolution.ONE_HOUR]


def test_replayed_five_second_window_is_absorbed_once() -> None:
    w = PartitionWindows()
    w.add(ev(0, 1.0, cpu=40))
    w.add(ev(0, 11.0))
    [five] = [a for a in closed(w) if a.resolution is Resolution.FIVE_SECONDS]
    hour = next(iter(w._rollups[Resolution.ONE_HOUR].values()))[SERVERS[0]]
    acc = WindowAcc.from_event(ev(0, 1.0, cpu=40), int(T0.timestamp()), 5, None)
    before = hour.count
    hour.absorb(acc)  # the same 5 s window again, as after a restart's replay
    assert hour.count == before == five.count


def test_committable_offset_is_the_oldest_open_window() -> None:
    w = PartitionWindows()
    w.add(ev(0, 1.0), offset=100)
    w.add(ev(1, 2.0), offset=101)
    w.add(ev(0, 6.0), offset=102)
    assert w.committable_offset(103) == 100
    w.add(ev(0, 11.0), offset=103)
    closed(w)  # [0,5) closes (watermark 11 > 10)
    assert w.committable_offset(104) == 102
    w.advance_to(math.inf)
    closed(w)
    assert w.committable_offset(104) == 104


def test_grace_of_rollups_must_cover_the_five_second_grace() -> None:
    with pytest.raises(ValueError, match="at least"):
        Grace(five_seconds=10, one_hour=5)
