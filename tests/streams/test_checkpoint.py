"""Crash safety of the stream processor, as pure logic (hypothesis): a worker that crashes at
any point — between batches with only part of its outputs acknowledged, halfway through
writing a checkpoint, or before committing one written — and restarts from its changelog and
committed offset (or, starting over in place, from the offset its restored progress record
names) emits exactly the aggregates, corrections and dead letters of an uninterrupted run,
with late samples (absorbed as corrections, or beyond the horizon) and duplicates (dropped)
in the input. A revision of a window may come out twice, never with different content, never
missing; the windows are those of the input without its duplicates. A changelog of an earlier
version is taken over; one of a version this worker does not know is refused."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import DeadLetter, DeadLetterReason, Resolution, WindowAggregate
from streams.processor import PROGRESS_KEY, Outputs, StreamProcessor
from streams.windows import STATE_VERSION, ChangelogRecordError, Grace
from tests.factories import EVENT_T0 as T0
from tests.factories import SERVERS, event_dict

WALL = (T0 + timedelta(days=3)).timestamp()  # emission time: constant, so content compares
FAR = (T0 + timedelta(days=5)).timestamp()  # the idle clock that closes what is left
HOUR = T0 + timedelta(hours=1)  # 23:00, an hour boundary
MIDNIGHT = T0 + timedelta(hours=2)  # 00:00, an hour and a day boundary


def _event(server: int, at: float, cpu: float) -> tuple[bytes, bytes]:
    ts = (T0 + timedelta(seconds=at)).isoformat()
    value = event_dict(server_id=SERVERS[server], timestamp=ts, cpu_usage=cpu, network_rx=7)
    return SERVERS[server].encode(), json.dumps(value).encode()


def scripted_records(
    delays: list[tuple[int, int]],
    late_at: list[int],
    junk_at: list[int],
    dupes: list[tuple[int, int]] | None = None,
) -> list[tuple[bytes, bytes]]:
    """Two servers at 1 Hz around 23:00 and around midnight, as they would arrive: some
    records delayed by up to 4 s (out of order within grace), some stragglers from 30 or
    200 s back (late), some duplicates (a record sent again, with other values, some places
    later: in its open window, its closed one, or beyond the horizon), some junk."""
    timed: list[tuple[float, tuple[bytes, bytes]]] = []
    base_hour = (HOUR - T0).total_seconds()
    base_midnight = (MIDNIGHT - T0).total_seconds()
    for base, span in ((base_hour, range(-25, 35)), (base_midnight, range(-40, 50))):
        for i in span:
            for s in (0, 1):
                t = base + i
                timed.append((t + s * 0.1, _event(s, t, float((i * 7 + s * 13) % 100))))
    records = [r for _, r in sorted(timed, key=lambda x: x[0])]
    for i, by in delays:
        i %= len(records)
        records.insert(min(i + by, len(records)), records.pop(i))
    for n, i in enumerate(late_at):  # a sample from between two it sent long before
        i %= len(records)
        value = records[i][1]
        old = json.loads(value)
        server = SERVERS.index(old["server_id"])
        back = 200.5 if n % 2 else 30.5
        at = (T0.fromisoformat(old["timestamp"]) - T0).total_seconds() - back
        records.insert(i + 1, _event(server, at, 99.0))
    for i, by in dupes or []:
        i %= len(records)
        records.insert(min(i + by, len(records)), _duplicate(records[i]))
    for i in junk_at:
        records.insert(i % len(records), (b"junk", b"{not json"))
    return records


def _duplicate(record: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    """The record sent again, its values changed (the first one sent must win); junk as is."""
    key, value = record
    try:
        event = json.loads(value)
    except json.JSONDecodeError:
        return record
    event["cpu_usage"] = (event["cpu_usage"] + 50.0) % 100
    event["network_rx"] += 1
    return key, json.dumps(event).encode()


@dataclass
class Kafka:
    """What the broker holds: acknowledged outputs, the changelog, the committed offset."""

    outputs: list[WindowAggregate | DeadLetter] = field(default_factory=list)
    changelog: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    committed: int = 0

    def state(self) -> dict[bytes, bytes]:
        latest: dict[bytes, bytes] = {}
        for key, value in self.changelog:
            if value is None:
                latest.pop(key, None)
            else:
                latest[key] = value
        return latest


def run(records: list[tuple[bytes, bytes]], data: st.DataObject | None) -> Kafka:
    """Process `records` to the end; with `data`, batch sizes, checkpoints and up to four
    crashes (and how much of the in-flight work reached Kafka) are drawn from it."""
    kafka = Kafka()
    crashes = 0
    while True:
        proc = StreamProcessor(
            source_topic="raw", grace=Grace({"5s": 5, "1h": 10, "1d": 15}), lateness_horizon=120
        )
        proc.restore(0, kafka.state(), WALL)
        pos, crashed = kafka.committed, False
        if data is not None and data.draw(st.booleans()):  # a restart in place
            pos = proc.replay_from.get(0, kafka.committed)
        pending: list[WindowAggregate | DeadLetter] = []
        while pos < len(records) and not crashed:
            size = data.draw(st.integers(1, 40)) if data else 17
            out = Outputs()
            for offset in range(pos, min(pos + size, len(records))):
                key, value = records[offset]
                proc.record(0, offset, key, value, WALL, out)
            pending += [*(a.message() for a in out.aggregates), *out.dead_letters]
            pos += size
            crash_now = data is not None and crashes < 4 and data.draw(st.integers(0, 3)) == 0
            if crash_now and data is not None:  # only some unacknowledged outputs made it
                kafka.outputs += pending[: data.draw(st.integers(0, len(pending)))]
                crashes, crashed = crashes + 1, True
            elif data is None or data.draw(st.booleans()):
                kafka.outputs += pending
                pending = []
                state = proc.checkpoint(0)
                if data is not None and crashes < 4 and data.draw(st.integers(0, 3)) == 0:
                    kafka.changelog += state[: data.draw(st.integers(0, len(state)))]
                    crashes, crashed = crashes + 1, True
                    continue
                kafka.changelog += state
                if data is not None and crashes < 4 and data.draw(st.integers(0, 5)) == 0:
                    crashes, crashed = crashes + 1, True  # before the commit
                    continue
                upto = proc.committable(0)
                if upto is not None:
                    kafka.committed = upto
        if not crashed:
            kafka.outputs += [*pending, *(a.message() for a in proc.idle(0, FAR).aggregates)]
            return kafka


def by_window(
    outputs: list[WindowAggregate | DeadLetter],
) -> dict[tuple[str, str, str, int], list[str]]:
    """Each revision of each window: its contents as emitted (more than one if repeated)."""
    windows: dict[tuple[str, str, str, int], list[str]] = {}
    for o in outputs:
        if isinstance(o, WindowAggregate):
            key = (o.resolution.value, o.server_id, o.window_start.isoformat(), o.revision)
            windows.setdefault(key, []).append(o.model_dump_json(exclude={"emitted_at"}))
    return windows


def letters(outputs: list[WindowAggregate | DeadLetter]) -> set[tuple[str, int | None]]:
    return {(o.reason.value, o.source_offset) for o in outputs if isinstance(o, DeadLetter)}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 8)), max_size=12),
    st.lists(st.integers(0, 10**6), max_size=3),
    st.lists(st.integers(0, 10**6), max_size=3),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 300)), max_size=8),
    st.data(),
)
def test_crash_and_restart_anywhere_gives_the_uninterrupted_result(
    delays: list[tuple[int, int]],
    late_at: list[int],
    junk_at: list[int],
    dupes: list[tuple[int, int]],
    data: st.DataObject,
) -> None:
    records = scripted_records(delays, late_at, junk_at, dupes)
    reference = run(records, None)
    expected = by_window(reference.outputs)
    assert all(len(v) == 1 for v in expected.values())
    assert {k[0] for k in expected} == {"5s", "1h", "1d"}
    # The duplicates change no window (those beyond the horizon are dead-lettered as late).
    assert expected == by_window(run(scripted_records(delays, late_at, junk_at), None).outputs)

    crashed = run(records, data)
    got = by_window(crashed.outputs)
    assert got.keys() == expected.keys()
    for key, contents in got.items():
        assert set(contents) == set(expected[key]), key  # repeats are identical
    assert letters(crashed.outputs) == letters(reference.outputs)


def test_the_scripted_input_has_corrections_and_late_letters() -> None:
    """The generator's re-sends do what the property test needs: corrections (revision > 0)
    of 5 s and hourly windows, and dead letters for those beyond the horizon."""
    reference = run(scripted_records([], [100, 101], []), None)
    revised = {k[0] for k in by_window(reference.outputs) if k[3] > 0}
    assert revised >= {"5s"}
    assert {reason for reason, _ in letters(reference.outputs)} == {"late"}


def test_a_changelog_of_the_previous_release_is_taken_over() -> None:
    """A worker upgraded over a running group finds records of version 1 (one event time per
    partition, open rollups, markers of emitted ones): the open hour goes on with what it
    held, and a late sample for a 5 s window it had closed is refused (its content was not
    kept), never turned into a window that holds only itself."""
    hour = int(HOUR.timestamp())
    start = hour - 3600
    stats = [100.0, 10.0, 30.0, 20.0] * 3  # cpu, memory, disk: sum, min, max, last
    v1_server = {"rollups": [["1h", start, 3600, 5, *stats, 50, 25, hour - 100.0, hour - 105]]}
    v1 = {
        PROGRESS_KEY: json.dumps({"watermark": hour - 100.0, "next_offset": 40}).encode(),
        SERVERS[0].encode(): json.dumps(v1_server).encode(),
    }
    proc = StreamProcessor(source_topic="raw")
    proc.restore(0, v1, WALL)
    out = Outputs()
    for offset, at in enumerate((3600 - 30.0, 3600 - 200.0, 3600 + 10.0), start=40):
        proc.record(0, offset, None, _event(0, at, 50.0)[1], WALL, out)
    [letter] = out.dead_letters  # 3400 s: a window the old worker had closed
    assert letter.reason is DeadLetterReason.LATE and "released" in letter.error
    [hourly] = [a.message() for a in out.aggregates if a.resolution is Resolution.ONE_HOUR]
    assert (hourly.count, hourly.network_rx) == (6, 57)  # 5 from version 1, one new


def _restarted(records: list[tuple[bytes, bytes]], kafka: Kafka) -> StreamProcessor:
    proc = StreamProcessor(
        source_topic="raw", grace=Grace({"5s": 5, "1h": 10, "1d": 15}), lateness_horizon=120
    )
    proc.restore(0, kafka.state(), WALL)
    return proc


def _feed(proc: StreamProcessor, records: list[tuple[bytes, bytes]], lo: int, hi: int) -> Outputs:
    out = Outputs()
    for offset in range(lo, hi):
        key, value = records[offset]
        proc.record(0, offset, key, value, WALL, out)
    return out


def _acknowledged(out: Outputs) -> list[WindowAggregate | DeadLetter]:
    return [*(a.message() for a in out.aggregates), *out.dead_letters]


def _cut_anywhere(records: list[tuple[bytes, bytes]], first: int, second: int) -> int:
    """Checkpoint after `records[:first]` (and commit), process up to `second`, then crash
    with the next checkpoint cut short, at every possible record in turn: each restart gives
    the uninterrupted run's windows. The number of cut points tried."""
    expected = by_window(run(records, None).outputs)
    probe = _restarted(records, Kafka())
    _feed(probe, records, 0, first)
    probe.checkpoint(0)
    _feed(probe, records, first, second)
    cut_points = len(probe.checkpoint(0)) + 1
    for cut in range(cut_points):
        kafka = Kafka()
        proc = _restarted(records, kafka)
        kafka.outputs += _acknowledged(_feed(proc, records, 0, first))
        kafka.changelog += proc.checkpoint(0)
        kafka.committed = proc.committable(0) or 0
        kafka.outputs += _acknowledged(_feed(proc, records, first, second))
        kafka.changelog += proc.checkpoint(0)[:cut]  # the crash
        proc = _restarted(records, kafka)
        out = _feed(proc, records, kafka.committed, len(records))
        kafka.outputs += [*_acknowledged(out), *(a.message() for a in proc.idle(0, FAR).aggregates)]
        got = by_window(kafka.outputs)
        assert got.keys() == expected.keys(), cut
        for key, contents in got.items():
            assert set(contents) == set(expected[key]), (cut, key)
    return cut_points


def test_a_checkpoint_cut_short_anywhere_keeps_every_kept_window() -> None:
    """A late sample corrects a closed window, then the server's event time jumps beyond the
    horizon and releases it; the checkpoint after that is cut short at every possible record.
    Its tombstones come after the server records that release the windows, so a restart
    never finds the window gone under the older record and emits one holding only the late
    sample (a crash-and-restart run found that)."""
    records = scripted_records([], [2202], [])
    late = 103  # a sample from 30 s behind its server, for a window closed at 102
    jump = 122  # past the first records of the midnight span: the 23:00 windows are released
    assert _cut_anywhere(records, late - 1, jump) > 5


def test_a_checkpoint_cut_short_anywhere_tells_corrections_from_duplicates() -> None:
    """After a checkpoint: a duplicate of a closed window's sample, a correction of that
    window, a duplicate of the correction; the next checkpoint is cut short at every record.
    Cut after the window's record and before its server's, the restored window is newer than
    its server's hour and day: replaying, the correction (its offset in the window's record)
    still goes to them, and the duplicate before it, at an offset the window also covers,
    does not."""
    at = 100
    records = scripted_records([], [], [])
    old = records[at - 60]  # server 0's sample 30 s before: its window has closed
    event = json.loads(old[1])
    assert event["server_id"] == SERVERS[0]
    correction = _event(0, (T0.fromisoformat(event["timestamp"]) - T0).total_seconds() + 0.5, 97)
    records.insert(at, correction)
    without_duplicates = list(records)
    records.insert(at, _duplicate(old))
    records.insert(at + 4, _duplicate(correction))
    reference = by_window(run(records, None).outputs)
    assert reference == by_window(run(without_duplicates, None).outputs)
    revised = {(k[0], k[3]) for k in reference if k[3] > 0}
    assert revised == {("5s", 1), ("1h", 1)}  # the correction, once (the day is still open)
    assert _cut_anywhere(records, at, at + 10) > 3


def test_the_progress_record_names_the_offset_to_replay_from() -> None:
    """The offset a checkpoint commits is in its progress record too, so a restart that
    restores that state knows where its replay starts without asking the group coordinator
    (which, just after a restart of the whole cluster, can answer that nothing was
    committed). A progress record of the previous release names none."""
    records = scripted_records([], [], [])
    proc = _restarted(records, Kafka())
    _feed(proc, records, 0, 50)
    kafka = Kafka(changelog=proc.checkpoint(0))
    upto = proc.committable(0)
    assert upto is not None and 0 < upto < 50  # the open windows' first records
    assert _restarted(records, kafka).replay_from == {0: upto}
    v2 = {PROGRESS_KEY: json.dumps({"v": 2, "next_offset": 40}).encode()}
    proc.restore(0, v2, WALL)
    assert proc.replay_from == {}


def test_a_changelog_of_version_2_is_taken_over() -> None:
    """Records a worker of version 2 wrote, positional (as they are in a running deployment's
    changelog): the kept 5 s window takes a late sample as a correction, the open hour goes
    on from what it held."""
    hour = int(HOUR.timestamp())
    kept = hour - 300
    stats = [100.0, 10.0, 30.0, 20.0] * 3  # cpu, memory, disk: sum, min, max, last
    procs = [[1, "init", 0.1, 0.2]]
    window = [kept, 5, 5, *stats, 35, 20, kept + 4.0, 0, 30, procs]
    rollup = [hour - 3600, 3600, 100, *stats, 700, 400, hour - 101.0, -1, 39, None]
    server: dict[str, object] = {"v": 2, "event_time": hour - 100.0, "closed_time": hour - 100.0}
    server["covered"] = 40
    server |= {"released": -(2**62), "rollups": [["1h", rollup]]}
    v2 = {
        PROGRESS_KEY: json.dumps({"v": 2, "next_offset": 40}).encode(),
        SERVERS[0].encode(): json.dumps(server).encode(),
        b"w|%s|%d" % (SERVERS[0].encode(), kept): json.dumps(window).encode(),
    }
    proc = StreamProcessor(source_topic="raw")
    proc.restore(0, v2, WALL)
    out = Outputs()
    for offset, at in enumerate((3600 - 298.0, 3600 + 10.0), start=40):
        proc.record(0, offset, None, _event(0, at, 50.0)[1], WALL, out)
    assert out.dead_letters == []
    by = {a.resolution: a.message() for a in out.aggregates}
    five, hourly = by[Resolution.FIVE_SECONDS], by[Resolution.ONE_HOUR]
    assert (five.count, five.revision, five.network_rx, five.cpu_usage.max) == (6, 1, 42, 50.0)
    assert five.processes is not None and five.processes[0].name == "init"
    assert (hourly.count, hourly.revision, hourly.network_rx) == (101, 0, 707)
    # Written again in this worker's version, named.
    assert all(json.loads(v)["v"] == STATE_VERSION for _, v in proc.checkpoint(0) if v is not None)


def test_a_progress_record_of_an_unknown_version_is_refused_with_its_key() -> None:
    proc = StreamProcessor(source_topic="raw")
    newer = {PROGRESS_KEY: json.dumps({"v": 9, "next_offset": 40, "other": []}).encode()}
    with pytest.raises(ChangelogRecordError, match=r"b'progress': version 9"):
        proc.restore(0, newer, WALL)
