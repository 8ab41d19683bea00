"""Unit tests (hypothesis) of the windowing math: cascade equals direct aggregation (with
late samples absorbed as corrections), out-of-order events within grace, closing once per
revision, the lateness horizon, duplicates (hypothesis: an input with duplicates emits what
it emits without them), packing for memory; the changelog's records (hypothesis: encoded,
then decoded, each is what it was), their versions, and the order they are written in."""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import RESOLUTIONS, ProcessInfo, RawMetricEvent, Resolution, WindowAggregate, sketch
from streams.windows import (
    BASE,
    STATE_VERSION,
    ChangelogRecordError,
    ClosedWindow,
    Grace,
    MetricAcc,
    PartitionWindows,
    ServerWindows,
    WindowAcc,
    window_key,
)
from tests.factories import EVENT_T0 as T0
from tests.factories import SERVERS

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
    """The reference: (server, window start) → (count, cpu sum, cpu min, cpu max, rx, tx),
    each sample (server, timestamp) counted once, the first one given."""
    out: dict[tuple[str, int], tuple[int, float, float, float, int, int]] = {}
    size = resolution.seconds
    for e in first_of_each(events):
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


def first_of_each(events: Iterable[RawMetricEvent]) -> list[RawMetricEvent]:
    """`events` without the duplicates: the first of each (server, timestamp) only."""
    seen: set[tuple[str, datetime]] = set()
    out = []
    for e in events:
        if (e.server_id, e.timestamp) not in seen:
            seen.add((e.server_id, e.timestamp))
            out.append(e)
    return out


STAMP = "2030-01-01T00:00:00Z"


def feed(w: PartitionWindows, events: Iterable[RawMetricEvent], wall: float = 0.0) -> list[bool]:
    """Add each event at the partition's next offset; True for each one taken, False if
    refused."""
    taken = []
    for e in events:
        offset = NEXT_OFFSET.get(w, 0)
        NEXT_OFFSET[w] = offset + 1
        taken.append(w.add(e, offset, wall, STAMP, OUT) is None)
    return taken


class _ByIdentity(dict[int, tuple[PartitionWindows, int]]):
    """Each partition's next offset, by the object itself (an `id` alone is reused once
    its object is gone, and a new partition would start at an old one's offset)."""

    def get(self, w: PartitionWindows, default: int = 0) -> int:  # type: ignore[override]
        held = super().get(id(w))
        return held[1] if held is not None and held[0] is w else default

    def __getitem__(self, w: PartitionWindows) -> int:  # type: ignore[override]
        return self.get(w)

    def __setitem__(self, w: PartitionWindows, offset: int) -> None:  # type: ignore[override]
        super().__setitem__(id(w), (w, offset))


NEXT_OFFSET = _ByIdentity()


OUT: list[ClosedWindow] = []


@pytest.fixture(autouse=True)
def _fresh_outbox() -> None:
    OUT.clear()


def emitted(w: PartitionWindows, *, finish: bool = False) -> list[WindowAggregate]:
    """What has been emitted so far (with `finish`: after the wall clock closes the rest),
    as a consumer of the aggregate topics reads it; cleared for the next call."""
    if finish:
        w.idle(math.inf, STAMP, OUT)
    out = [c.message() for c in OUT]
    OUT.clear()
    return out


def latest(
    messages: list[WindowAggregate], resolution: Resolution
) -> dict[tuple[str, int], WindowAggregate]:
    """Each window's highest revision; revisions come out once each, counting up from 0."""
    revisions: dict[tuple[str, int], list[int]] = {}
    got: dict[tuple[str, int], WindowAggregate] = {}
    for a in messages:
        if a.resolution is resolution:
            key = (a.server_id, int(a.window_start.timestamp()))
            revisions.setdefault(key, []).append(a.revision)
            got[key] = a
    for key, revs in revisions.items():
        assert revs == list(range(len(revs))), key
        assert got[key].revision == revs[-1]
    return got


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

#: Moves of some events later in the input: (index, how many places, by up to 40 minutes).
moves_strategy = st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 300)), max_size=20)


def check_equals_direct(emitted_: list[WindowAggregate], accepted: list[RawMetricEvent]) -> None:
    """Every window's highest revision equals aggregating `accepted` directly; a rollup's
    sketch is the sketch of its raw samples, and its percentiles within 1 % of theirs."""
    for resolution in Resolution:
        expected = aggregate_directly(accepted, resolution)
        got = latest(emitted_, resolution)
        assert set(got) == set(expected)
        samples: dict[tuple[str, int], list[float]] = {}
        for e in first_of_each(accepted):
            start = int(e.timestamp.timestamp() // resolution.seconds) * resolution.seconds
            samples.setdefault((e.server_id, start), []).append(e.cpu_usage)
        for key, (count, total, lo, hi, rx, tx) in expected.items():
            a = got[key]
            assert a.count == count
            assert a.cpu_usage.avg == pytest.approx(min(100.0, total / count), rel=1e-9, abs=1e-9)
            assert (a.cpu_usage.min, a.cpu_usage.max) == (lo, hi)
            assert (a.network_rx, a.network_tx) == (rx, tx)
            if resolution is BASE:
                assert a.cpu_usage.sketch is None and a.cpu_usage.p99 is None
                continue
            sk = a.cpu_usage.sketch
            assert sk is not None
            assert sketch.from_arrays(sk.keys, sk.counts) == sketch.of(samples[key])
            values = sorted(samples[key])
            for name, q in sketch.QUANTILES.items():
                exact = values[math.floor(q * (len(values) - 1))]
                got_q = getattr(a.cpu_usage, name)
                bound = max(sketch.RELATIVE_ACCURACY * (1 + 1e-9) * exact, sketch.MIN_INDEXABLE)
                assert abs(got_q - exact) <= bound


@settings(max_examples=60, deadline=None)
@given(events_strategy)
def test_cascade_equals_direct_aggregation(raw: list[tuple[int, float, float, int]]) -> None:
    events = [ev(s, t, cpu, rx) for s, t, cpu, rx in raw]
    w = PartitionWindows()
    assert all(feed(w, events))
    out = emitted(w, finish=True)
    check_equals_direct(out, events)
    assert all(a.revision == 0 for a in out)  # in order: nothing is corrected


@settings(max_examples=80, deadline=None)
@given(events_strategy, moves_strategy)
def test_late_samples_are_corrections_and_the_last_revision_equals_direct(
    raw: list[tuple[int, float, float, int]], moves: list[tuple[int, int]]
) -> None:
    """Some events arrive far behind their server (up to the whole input later): those
    within the horizon correct their windows; the rest are refused. The highest revision of
    every window equals aggregating the accepted events directly."""
    events = [ev(s, t, cpu, rx) for s, t, cpu, rx in raw]
    for i, by in moves:
        i %= len(events)
        events.insert(min(i + by, len(events)), events.pop(i))
    w = PartitionWindows(horizon=1800)
    taken = feed(w, events)
    out = emitted(w, finish=True)
    accepted = [e for e, ok in zip(events, taken, strict=True) if ok]
    check_equals_direct(out, accepted)
    assert w.late_dropped == taken.count(False)
    assert w.duplicates == len(accepted) - len(first_of_each(accepted))
    # Refused only beyond the horizon behind its own server's latest sample before it.
    newest: dict[str, float] = {}
    for e, ok in zip(events, taken, strict=True):
        ts = e.timestamp.timestamp()
        assert ok == (ts >= newest.get(e.server_id, -math.inf) - 1800)
        newest[e.server_id] = max(ts, newest.get(e.server_id, -math.inf))


def test_out_of_order_within_grace_is_kept_and_last_is_by_event_time() -> None:
    w = PartitionWindows()
    feed(w, [ev(0, 1.0, cpu=10), ev(0, 8.0, cpu=30), ev(0, 4.0, cpu=20)])
    assert emitted(w) == []  # server event time 8: window [0,5) closes at 10
    feed(w, [ev(0, 10.5)])
    [five] = emitted(w)
    assert five.count == 2 and five.cpu_usage.avg == 15.0 and five.revision == 0
    assert five.cpu_usage.last == 20  # the event with the latest timestamp, not the last to arrive
    assert five.window_start == T0 and five.window_end == T0 + timedelta(seconds=5)


def test_each_server_is_judged_by_its_own_event_time() -> None:
    w = PartitionWindows(Grace({"5s": 2.0}))
    feed(w, [ev(0, 0.5), ev(0, 100.0)])  # server 0 is far ahead
    assert [a.window_start for a in emitted(w)] == [T0]
    assert all(feed(w, [ev(1, 0.5), ev(1, 3.0), ev(1, 4.9)]))  # server 1: nothing late
    assert emitted(w) == []
    feed(w, [ev(1, 7.0)])  # its own event time closes its window
    [five] = emitted(w)
    assert (five.server_id, five.count, five.revision) == (SERVERS[1], 3, 0)


def test_a_late_sample_corrects_its_window_and_the_rollups() -> None:
    w = PartitionWindows(Grace({"5s": 2.0}))
    feed(w, [ev(0, 0.5, cpu=10), ev(0, 7.0)])
    [first] = emitted(w)
    assert (first.count, first.revision) == (1, 0)
    assert feed(w, [ev(0, 3.0, cpu=50)]) == [True]
    [again] = emitted(w)
    assert (again.count, again.revision, again.cpu_usage.max) == (2, 1, 50)
    assert (w.late_absorbed, w.late_dropped) == (1, 0)
    hour = latest(emitted(w, finish=True), Resolution.ONE_HOUR)[(SERVERS[0], int(T0.timestamp()))]
    assert hour.count == 3 and hour.revision == 0


def test_an_emitted_rollup_is_emitted_again_when_corrected() -> None:
    w = PartitionWindows(horizon=600)
    feed(w, [ev(0, 3590.0), ev(0, 3600.0 + 20)])  # 23:00:20 closes the hour 22:00
    [_, hour] = emitted(w)
    assert (hour.resolution, hour.count) == (Resolution.ONE_HOUR, 1)
    feed(w, [ev(0, 3591.0)])  # 29 s behind: within the horizon
    by = {a.resolution: a for a in emitted(w)}
    assert (by[Resolution.FIVE_SECONDS].count, by[Resolution.FIVE_SECONDS].revision) == (2, 1)
    assert (by[Resolution.ONE_HOUR].count, by[Resolution.ONE_HOUR].revision) == (2, 1)
    assert Resolution.ONE_DAY not in by  # still open: it just takes the sample


def test_beyond_the_horizon_is_refused_and_kept_windows_are_released() -> None:
    w = PartitionWindows(horizon=60)
    feed(w, [ev(0, float(s)) for s in range(200)])
    emitted(w)
    assert w.kept_windows() == 11  # closed (start <= 185), ending within 60 s of 199
    assert feed(w, [ev(0, 120.5), ev(0, 150.5)]) == [False, True]
    assert (w.late_dropped, w.late_absorbed) == (1, 1)


def test_wall_clock_closes_a_quiet_server_from_its_own_event_time() -> None:
    w = PartitionWindows()
    base = T0.timestamp()
    feed(w, [ev(0, 1.0)], wall=base + 1)
    w.idle(base + 5, STAMP, OUT)  # quiet for 4 s: event time carried to 5, [0,5) still open
    assert emitted(w) == []
    w.idle(base + 10, STAMP, OUT)  # quiet for 9 s: carried to 10 = end + grace
    assert [a.resolution for a in emitted(w)] == [Resolution.FIVE_SECONDS]
    w.idle(base + 3600 + 6, STAMP, OUT)
    assert [a.resolution for a in emitted(w)] == [Resolution.ONE_HOUR]


def test_a_quiet_server_far_behind_the_clock_is_not_closed_by_the_clock_itself() -> None:
    """A host 30 s behind that keeps sending is never closed early by the idle clock."""
    w = PartitionWindows()
    base = T0.timestamp()
    for s in range(60):
        feed(w, [ev(0, float(s))], wall=base + 30 + s)
        w.idle(base + 30 + s + 0.9, STAMP, OUT)
    assert all(a.revision == 0 and a.count == 5 for a in emitted(w))
    assert w.late_absorbed == 0


def test_packed_window_round_trips() -> None:
    acc = WindowAcc.from_event(ev(0, 1.0, cpu=12.5), int(T0.timestamp()), 5, 7)
    acc.add(ev(0, 2.0, cpu=40), 9, T0.timestamp() + 2.0)
    acc.mark(T0.timestamp() + 2.0)
    acc.revision = 2
    back = WindowAcc.unpack(acc.server_id, acc.pack())
    back.first_offset = acc.first_offset
    # Kept without its sketches: they went into its rollups as it closed.
    assert acc.cpu.sketch is not None and back.cpu.sketch is None
    for m in ("cpu", "mem", "disk"):
        getattr(acc, m).sketch = None
    assert back == acc
    assert back.to_json_bytes(Resolution.FIVE_SECONDS, STAMP) == acc.to_json_bytes(
        Resolution.FIVE_SECONDS, STAMP
    )
    aggregate = acc.to_aggregate(Resolution.FIVE_SECONDS, NOW)
    direct = WindowAggregate.model_validate_json(acc.to_json_bytes(Resolution.FIVE_SECONDS, STAMP))
    assert direct == aggregate.model_copy(update={"emitted_at": direct.emitted_at})


def test_a_packed_window_costs_its_size_not_an_encoder_buffer() -> None:
    """Kept windows are many (720 per server-hour): each must cost about its length, in
    memory and as a changelog record waiting for the next checkpoint."""
    acc = WindowAcc.from_event(ev(0, 1.0), int(T0.timestamp()), 5, 7)
    for encode in (acc.pack, acc.changelog_value):
        tracemalloc.start()
        try:
            packed = [encode() for _ in range(1000)]
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert held / len(packed) < len(packed[0]) + 200, encode


def test_committable_offset_is_the_oldest_open_window() -> None:
    w = PartitionWindows()
    for offset, e in enumerate([ev(0, 1.0), ev(1, 2.0), ev(0, 6.0)], start=100):
        w.add(e, offset, 0.0, STAMP, OUT)
    assert w.committable_offset(103) == 100
    w.add(ev(0, 11.0), 103, 0.0, STAMP, OUT)  # server 0's [0,5) closes (event time 11 > 10)
    assert w.committable_offset(104) == 101  # server 1's is still open
    w.idle(math.inf, STAMP, OUT)
    emitted(w)
    assert w.committable_offset(104) == 104


def test_a_duplicate_in_an_open_window_is_dropped_and_the_first_wins() -> None:
    w = PartitionWindows()
    taken = feed(w, [ev(0, 1.0, cpu=10), ev(0, 2.0, cpu=20), ev(0, 1.0, cpu=90, rx=5)])
    assert taken == [True, True, True]  # dropped, not refused: nothing for the DLQ
    assert feed(w, [ev(0, 2.0, cpu=0), ev(1, 1.0, cpu=30)]) == [True, True]  # another server's
    assert (w.duplicates, w.late_absorbed, w.late_dropped) == (2, 0, 0)
    five = {a.server_id: a for a in emitted(w, finish=True) if a.resolution is BASE}
    zero = five[SERVERS[0]]
    assert (zero.count, zero.revision, zero.network_rx) == (2, 0, 200)
    assert (zero.cpu_usage.min, zero.cpu_usage.max, zero.cpu_usage.last) == (10, 20, 20)
    assert five[SERVERS[1]].count == 1


def test_a_duplicate_for_a_closed_window_is_not_a_correction() -> None:
    """A duplicate arriving after its window closed (kept for corrections) re-emits nothing,
    and the window's next correction still has the next revision."""
    w = PartitionWindows(Grace({"5s": 2.0}))
    feed(w, [ev(0, float(t), cpu=10) for t in range(10)])
    assert [(a.count, a.revision) for a in emitted(w)] == [(5, 0)]  # [0, 5), closed at 7
    assert feed(w, [ev(0, 3.0, cpu=99)]) == [True]
    assert emitted(w) == []
    assert (w.duplicates, w.late_absorbed) == (1, 0)
    assert feed(w, [ev(0, 3.5, cpu=50)]) == [True]  # a straggler: a correction
    [again] = emitted(w)
    assert (again.count, again.revision, again.cpu_usage.max) == (6, 1, 50)
    assert feed(w, [ev(0, 3.5, cpu=99), ev(0, 0.0, cpu=99)]) == [True, True]
    assert emitted(w) == []
    assert (w.duplicates, w.late_absorbed) == (3, 1)
    hours = latest(emitted(w, finish=True), Resolution.ONE_HOUR)
    [hour] = hours.values()
    assert (hour.count, hour.cpu_usage.max) == (11, 50)


def test_fractional_timestamps_are_compared_exactly() -> None:
    w = PartitionWindows(Grace({"5s": 2.0}))
    taken = feed(w, [ev(0, 1.25), ev(0, 1.0), ev(0, 1.5), ev(0, 1.25, cpu=99), ev(0, 1.000001)])
    assert taken == [True] * 5 and w.duplicates == 1
    feed(w, [ev(0, 8.0)])  # closes [0, 5)
    [five] = emitted(w)
    assert (five.count, five.cpu_usage.max) == (4, 10)
    assert feed(w, [ev(0, 1.5, cpu=99), ev(0, 1.75, cpu=99)]) == [True, True]
    [again] = emitted(w)  # the second one only
    assert (again.count, again.revision, w.duplicates) == (5, 1, 2)
    packed = WindowAcc.unpack(SERVERS[0], w.servers[SERVERS[0]].kept[int(T0.timestamp())])
    assert packed.seen == 0b10  # second 1 of the window: 1.0
    assert packed.seen_exact is not None
    t0 = T0.timestamp()
    assert sorted(packed.seen_exact) == [t0 + 1.000001, t0 + 1.25, t0 + 1.5, t0 + 1.75]


def changelog_after(w: PartitionWindows, covered: int) -> dict[bytes, bytes]:
    """The compacted changelog of everything `w` has checkpointed, and this checkpoint."""
    state: dict[bytes, bytes] = {}
    for key, value in w.checkpoint(covered):
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return state


def test_duplicates_are_recognised_after_a_restore() -> None:
    """The seen timestamps of kept windows go through the changelog: a restarted worker drops
    a duplicate of a sample it holds, and of a correction it absorbed before the restart."""
    w = PartitionWindows(Grace({"5s": 2.0}))
    feed(w, [ev(0, float(t)) for t in range(20)])
    feed(w, [ev(0, 7.5, cpu=80)])  # a correction of [5, 10)
    emitted(w)
    restored = PartitionWindows(Grace({"5s": 2.0}))
    restored.restore(changelog_after(w, NEXT_OFFSET[w]), 0.0)
    NEXT_OFFSET[restored] = NEXT_OFFSET[w]
    assert (
        feed(restored, [ev(0, 3.0, cpu=99), ev(0, 7.5, cpu=99), ev(0, 12.0, cpu=99)]) == [True] * 3
    )
    assert emitted(restored) == []
    assert (restored.duplicates, restored.late_absorbed) == (3, 0)
    assert feed(restored, [ev(0, 7.25, cpu=90)]) == [True]
    [again] = emitted(restored)
    assert (again.count, again.revision, again.cpu_usage.max) == (7, 2, 90)


def test_sketches_go_through_the_changelog_and_older_state_has_none() -> None:
    """A restart keeps an open hour's sketch: its percentiles are those of every sample. State
    written before sketches (version 4) restores without one, and that hour's percentiles are
    not guessed from part of it: it is emitted without any."""
    events = [ev(0, float(t), cpu=float(t % 50)) for t in range(600)]
    more = [ev(0, float(t), cpu=float(t % 50)) for t in range(600, 1200)]
    hourly: dict[str, WindowAggregate] = {}
    for version in (5, 4):
        w = PartitionWindows(Grace({"5s": 2.0}))
        feed(w, events)
        emitted(w)
        state = changelog_after(w, NEXT_OFFSET[w])
        if version == 4:
            state = {k: _without_sketches(v) for k, v in state.items()}
        restored = PartitionWindows(Grace({"5s": 2.0}))
        restored.restore(state, 0.0)
        replay_from = w.committable_offset(NEXT_OFFSET[w])  # the open 5 s window's samples
        NEXT_OFFSET[restored] = replay_from
        feed(restored, events[replay_from:] + more)
        [hourly[str(version)]] = [
            a for a in emitted(restored, finish=True) if a.resolution is Resolution.ONE_HOUR
        ]
    whole = hourly["5"].cpu_usage
    assert hourly["5"].count == 1200 and whole.sketch is not None
    cpus = [e.cpu_usage for e in events + more]
    assert sketch.from_arrays(whole.sketch.keys, whole.sketch.counts) == sketch.of(cpus)
    older = hourly["4"].cpu_usage
    assert hourly["4"].count == 1200 and older.avg == whole.avg
    assert older.sketch is None and (older.p50, older.p99) == (None, None)


def _without_sketches(value: bytes) -> bytes:
    """A version-5 changelog record as version 4 wrote it: no sketches."""
    doc = orjson.loads(value)
    doc["v"] = 4
    for holder in [doc, *doc.get("rollups", [])]:
        for metric in ("cpu_usage", "memory_usage", "disk_usage"):
            if metric in holder:
                holder[metric].pop("sketch", None)
    return orjson.dumps(doc)


def test_a_replayed_duplicate_is_not_counted_again() -> None:
    """After a restart the replay (from the oldest open window's first record) goes over
    duplicates already counted: those the restored state accounts for are not counted again,
    whether their window is closed (skipped) or open (rebuilt)."""
    w = PartitionWindows(Grace({"5s": 2.0}))
    events = [ev(0, 1.0), ev(0, 2.0), ev(0, 9.0), ev(0, 1.0), ev(0, 11.0), ev(0, 11.0)]
    feed(w, events)  # [0, 5) closes at 9; 1.0 again: a closed window's; [10, 15) is open
    assert w.duplicates == 2
    committed = w.committable_offset(len(events))
    restored = PartitionWindows(Grace({"5s": 2.0}))
    restored.restore(changelog_after(w, len(events)), 0.0)
    for offset in range(committed, len(events)):
        assert restored.add(events[offset], offset, 0.0, STAMP, OUT) is None
    assert restored.duplicates == 0
    assert restored.add(ev(0, 11.0), len(events), 0.0, STAMP, OUT) is None  # a new one
    assert restored.duplicates == 1
    emitted(restored, finish=True)


def test_a_kept_window_of_version_3_restores_with_nothing_seen() -> None:
    """A record written before windows held their timestamps: a duplicate of what it holds
    cannot be told from a correction, and is taken as one; what comes after is deduplicated."""
    acc = WindowAcc.from_event(ev(0, 1.0), int(T0.timestamp()), 5, 0)
    acc.add(ev(0, 2.0), 1, T0.timestamp() + 2)
    acc.revision, acc.first_offset = 0, None
    record = acc.record()
    del record["seen"]
    w = PartitionWindows()
    server = ServerWindows(SERVERS[0], T0.timestamp() + 20, T0.timestamp() + 20, covered=2)
    server_record = orjson.loads(server.changelog_value()) | {"v": 3}
    w.restore(
        {
            window_key(SERVERS[0], acc.start): orjson.dumps({"v": 3, **record}),
            SERVERS[0].encode(): orjson.dumps(server_record),
        },
        0.0,
    )
    assert w.add(ev(0, 2.0, cpu=90), 2, 0.0, STAMP, OUT) is None
    [again] = [c.message() for c in OUT if c.resolution is BASE]
    assert (again.count, again.revision) == (3, 1)
    assert w.add(ev(0, 2.0, cpu=90), 3, 0.0, STAMP, OUT) is None
    assert (w.duplicates, w.late_absorbed) == (1, 1)


#: Whole seconds mostly, some fractional ones; few enough that duplicates are common.
times = st.integers(0, 120).map(float) | st.integers(0, 1200).map(lambda t: t / 10)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), times, st.floats(0, 100)), min_size=1, max_size=200),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 60)), max_size=40),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 8)), max_size=20),
)
def test_an_input_with_duplicates_emits_what_it_does_without_them(
    raw: list[tuple[int, float, float]],
    copies: list[tuple[int, int]],
    moves: list[tuple[int, int]],
) -> None:
    """Samples shuffled (within grace mostly, some later), some sent again (other values,
    some places later: while their window is open, once it has closed, or beyond the
    horizon): the windows emitted, revision by revision, are those of the input without the
    later copies, and each copy is counted or refused as late."""
    events = [ev(s, t, cpu) for s, t, cpu in sorted(raw, key=lambda x: x[1])]
    for i, by in moves:
        i %= len(events)
        events.insert(min(i + by, len(events)), events.pop(i))
    unique = first_of_each(events)
    with_copies = list(events)
    for i, by in copies:
        i %= len(with_copies)
        e = with_copies[i]
        copy = e.model_copy(update={"cpu_usage": 100 - e.cpu_usage, "network_rx": 1})
        with_copies.insert(min(i + by, len(with_copies)), copy)
    w, dedup = PartitionWindows(horizon=30), PartitionWindows(horizon=30)
    taken = dict(zip(map(id, with_copies), feed(w, with_copies), strict=True))
    got = emitted(w, finish=True)
    feed(dedup, unique)
    assert got == emitted(dedup, finish=True)
    accepted = [e for e in with_copies if taken[id(e)]]
    assert w.duplicates == len(accepted) - len(first_of_each(accepted))
    assert w.late_absorbed == dedup.late_absorbed


def test_grace_of_rollups_must_cover_the_five_second_grace() -> None:
    with pytest.raises(ValueError, match="at least"):
        Grace({"5s": 10, "1h": 5})


# -- changelog records ---------------------------------------------------------------------
percent = st.floats(0, 100)
metric_accs = st.builds(MetricAcc, st.floats(0, 1e9), percent, percent, percent)
processes = st.builds(
    ProcessInfo,
    pid=st.integers(0, 2**31),
    name=st.text(max_size=40),
    cpu_usage=st.floats(0, 400),
    memory_usage=percent,
)
windows = st.builds(
    WindowAcc,
    server_id=st.sampled_from(SERVERS),
    start=st.integers(0, 2**40),
    size=st.sampled_from([r.seconds for r in RESOLUTIONS]),
    count=st.integers(1, 10**6),
    cpu=metric_accs,
    mem=metric_accs,
    disk=metric_accs,
    rx=st.integers(0, 2**62),
    tx=st.integers(0, 2**62),
    last_ts=st.floats(0, 4e9),
    processes=st.none() | st.lists(processes, max_size=8),
    first_offset=st.none(),  # not recorded: only open windows have one, and replay rebuilds them
    last_offset=st.integers(-1, 2**62),
    revision=st.integers(-1, 10**4),
    seen=st.integers(0, 31),
    seen_exact=st.none() | st.lists(st.floats(0, 4e9), min_size=1, max_size=5),
    late_offsets=st.none() | st.lists(st.integers(0, 2**62), min_size=1, max_size=5),
)


@settings(max_examples=200, deadline=None)
@given(windows)
def test_a_kept_window_record_decodes_to_the_window(w: WindowAcc) -> None:
    value = w.changelog_value()
    assert orjson.loads(value)["v"] == STATE_VERSION
    assert WindowAcc.unpack(w.server_id, value) == w
    assert WindowAcc.unpack(w.server_id, w.pack()) == w  # the form held in memory


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(SERVERS),
    st.floats(0, 4e9),
    st.floats(0, 4e9),
    st.integers(0, 2**62),
    st.integers(-(2**62), 2**40),
    st.lists(st.tuples(st.sampled_from(list(Resolution)[1:]), windows), max_size=6),
)
def test_a_server_record_decodes_to_the_server(
    server_id: str,
    event_time: float,
    closed_time: float,
    covered: int,
    released: int,
    rollups: list[tuple[Resolution, WindowAcc]],
) -> None:
    s = ServerWindows(server_id, event_time, closed_time, covered=covered, released=released)
    for resolution, w in rollups:
        w.server_id, w.processes = server_id, None
        s.rollups[(resolution, w.start)] = w
    back = ServerWindows.from_changelog(server_id.encode(), s.changelog_value())
    assert back == s


def test_records_of_an_unknown_version_are_refused_with_their_key() -> None:
    w = PartitionWindows()
    acc = WindowAcc.from_event(ev(0, 1.0), int(T0.timestamp()), 5, 7)
    newer = orjson.dumps({"v": STATE_VERSION + 1, **acc.record()})
    key = b"w|" + SERVERS[0].encode() + b"|1795644000"
    with pytest.raises(ChangelogRecordError, match=rf"{key.decode()}.*version {STATE_VERSION + 1}"):
        w.restore({key: newer}, 0.0)
    server = ServerWindows(SERVERS[1], 1.0, 1.0)
    record = orjson.loads(server.changelog_value()) | {"v": 1}
    with pytest.raises(ChangelogRecordError, match=rf"{SERVERS[1]}'.*version 1"):
        w.restore({SERVERS[1].encode(): orjson.dumps(record)}, 0.0)
    with pytest.raises(ChangelogRecordError, match="not a readable server record"):
        w.restore({SERVERS[1].encode(): b'{"v": 3, "event_time": 1.0}'}, 0.0)
    assert w.servers == {}  # nothing of a partition it cannot read


def test_a_release_is_recorded_after_the_server_record_that_moved_past_it() -> None:
    """A checkpoint cut off before its server records must not have released kept windows
    the restored (older) server record still holds: a late sample within the horizon of the
    restored state is then a correction, not a window holding only itself."""
    w = PartitionWindows(horizon=60)
    feed(w, [ev(0, float(t)) for t in range(100)])
    first = list(w.checkpoint(100))
    feed(w, [ev(0, float(t)) for t in range(100, 200)])
    second = list(w.checkpoint(200))
    server_at = [i for i, (k, _) in enumerate(second) if not k.startswith(b"w|")]
    released_at = [i for i, (_, v) in enumerate(second) if v is None]
    assert server_at and released_at and max(server_at) < min(released_at)
    changelog: dict[bytes, bytes] = {}
    for key, value in [*first, *second[: server_at[0]]]:  # cut off before the server records
        if value is None:
            changelog.pop(key, None)
        else:
            changelog[key] = value
    restored = PartitionWindows(horizon=60)
    restored.restore(changelog, 0.0)
    OUT.clear()
    assert restored.add(ev(0, 50.5, cpu=90.0), 1000, 0.0, STAMP, OUT) is None
    [again] = [a for a in emitted(restored) if a.resolution is Resolution.FIVE_SECONDS]
    assert (again.count, again.revision, again.cpu_usage.max) == (6, 1, 90.0)


def test_a_server_record_is_written_when_what_it_holds_changes() -> None:
    """Samples that only fill an open window change nothing a restart needs (the replay
    rebuilds open windows); a window closing, or a late sample, does."""
    w = PartitionWindows(horizon=60)
    feed(w, [ev(0, 0.0), ev(0, 1.0)])
    list(w.checkpoint(2))
    feed(w, [ev(0, 2.0), ev(0, 3.0)])  # [0, 5) is still open
    assert list(w.checkpoint(4)) == []
    feed(w, [ev(0, 10.0)])  # closes [0, 5)
    assert [k for k, _ in w.checkpoint(5)] == [
        window_key(SERVERS[0], int(T0.timestamp())),
        SERVERS[0].encode(),
    ]
    feed(w, [ev(0, 11.0), ev(0, 12.0)])
    assert list(w.checkpoint(7)) == []
    assert feed(w, [ev(0, -100.0)]) == [False]  # refused: beyond the horizon
    assert [k for k, _ in w.checkpoint(8)] == [SERVERS[0].encode()]


def test_with_sketches_off_the_rollups_carry_no_percentiles() -> None:
    w = PartitionWindows(Grace({"5s": 2.0}), sketches=False)
    feed(w, [ev(0, float(t), cpu=float(t % 50)) for t in range(60)])
    out = emitted(w, finish=True)
    hourly = [a for a in out if a.resolution is Resolution.ONE_HOUR]
    assert len(hourly) == 1 and hourly[0].count == 60
    assert hourly[0].cpu_usage.sketch is None and hourly[0].cpu_usage.p99 is None
    assert hourly[0].cpu_usage.max == 49.0
