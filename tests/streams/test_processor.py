"""Unit tests of the stream processor: DLQ reasons with original bytes, lateness, duplicates,
status changes, idle partitions closing by the wall clock, committable offsets."""

from __future__ import annotations

import json
from datetime import timedelta

from schemas import MAX_RAW_EVENT_BYTES, DeadLetterReason, Resolution, ServerState, WindowAggregate
from streams.processor import Outputs, StreamProcessor
from streams.windows import Grace
from tests.factories import EVENT_T0 as T0
from tests.factories import SERVERS, event_dict

BASE = T0.timestamp()
FAST, SLOW = SERVERS  # a host on time, and one whose samples arrive 30 s behind


def raw(server: int, seconds: float, **extra: object) -> bytes:
    ts = (T0 + timedelta(seconds=seconds)).isoformat()
    return json.dumps(event_dict(server_id=SERVERS[server], timestamp=ts, **extra)).encode()


def test_invalid_records_go_to_the_dlq_with_reason_and_bytes() -> None:
    p = StreamProcessor(source_topic="metrics.raw.v1")
    cases = {
        b"{oops": DeadLetterReason.INVALID_JSON,
        raw(0, 1, cpu_usage=120): DeadLetterReason.VALIDATION,
        b" " * (MAX_RAW_EVENT_BYTES + 1): DeadLetterReason.OVERSIZE,
    }
    for offset, (value, reason) in enumerate(cases.items()):
        out = p.record(0, offset, b"k", value, BASE)
        [letter] = out.dead_letters
        assert letter.reason is reason
        assert letter.payload() == value[: len(letter.payload())]
        assert (letter.source_partition, letter.source_offset, letter.key) == (0, offset, "k")
        assert out.aggregates == [] and out.statuses == []
    # Nothing holds the partition back: invalid records are committable at once.
    assert p.committable(0) == 3


def test_late_event_beyond_the_horizon_goes_to_the_dlq_and_the_rest_goes_on() -> None:
    p = StreamProcessor(source_topic="t", lateness_horizon=8)
    p.record(0, 0, None, raw(0, 1), BASE)
    out = p.record(0, 1, None, raw(0, 12), BASE)  # event time 12 closes [0,5)
    assert [a.resolution for a in out.aggregates] == [Resolution.FIVE_SECONDS]
    late = p.record(0, 2, None, raw(0, 2), BASE)  # 10 s behind its server: beyond 8 s
    [letter] = late.dead_letters
    assert letter.reason is DeadLetterReason.LATE and "horizon" in letter.error
    assert p.counts() == {"late_absorbed": 0, "late_dropped": 1, "duplicates": 0}
    ok = p.record(0, 3, None, raw(0, 13), BASE)
    assert ok.dead_letters == []
    # Another server on the partition is judged by its own event time: nothing is late.
    assert p.record(0, 4, None, raw(1, 2), BASE).dead_letters == []


def test_a_duplicate_is_counted_not_dead_lettered() -> None:
    p = StreamProcessor(source_topic="t")
    p.record(0, 0, None, raw(0, 1, cpu_usage=10.0), BASE)
    again = p.record(0, 1, None, raw(0, 1, cpu_usage=90.0), BASE)  # other values: first wins
    assert (again.aggregates, again.dead_letters, again.statuses) == ([], [], [])
    closed = [a.message() for a in p.idle(0, BASE + 3600).aggregates]
    [five] = [a for a in closed if a.resolution is Resolution.FIVE_SECONDS]
    assert (five.count, five.cpu_usage.max) == (1, 10.0)
    assert p.counts() == {"late_absorbed": 0, "late_dropped": 0, "duplicates": 1}
    p.revoke(0)  # counts survive a revoked partition
    assert p.counts()["duplicates"] == 1


def test_status_online_offline_online() -> None:
    p = StreamProcessor(source_topic="t", offline_after=15)
    [online] = p.record(0, 0, None, raw(0, 1), BASE).statuses
    assert online.status is ServerState.ONLINE and online.server_id == SERVERS[0]
    assert p.record(0, 1, None, raw(0, 2), BASE + 1).statuses == []
    assert p.tick(BASE + 10).statuses == []
    assert p.tick(BASE + 16, caught_up=[1]).statuses == []  # its partition has a backlog
    [offline] = p.tick(BASE + 16, caught_up=[0]).statuses
    assert offline.status is ServerState.OFFLINE
    assert offline.last_event_at == T0 + timedelta(seconds=2)
    assert p.tick(BASE + 30).statuses == []  # said once
    [again] = p.record(0, 2, None, raw(0, 40), BASE + 40).statuses
    assert again.status is ServerState.ONLINE


def test_idle_partition_closes_by_wall_clock_and_commits_forward() -> None:
    p = StreamProcessor(source_topic="t")
    p.record(3, 10, None, raw(0, 1), BASE)
    assert p.committable(3) == 10  # the open window needs offset 10 on a replay
    assert p.idle(3, BASE + 8).aggregates == []  # event time carried to 9: not yet
    out = p.idle(3, BASE + 11)
    assert [a.message().window_start for a in out.aggregates] == [T0]
    assert p.committable(3) == 11
    assert p.committable(4) is None
    p.revoke(3)
    assert p.committable(3) is None


def keyed_event(server: str, at: float, cpu: float = 10.0) -> tuple[bytes, bytes]:
    ts = (T0 + timedelta(seconds=at)).isoformat()
    value = event_dict(server_id=server, timestamp=ts, cpu_usage=cpu)
    return server.encode(), json.dumps(value).encode()


class Run:
    """One partition fed record by record at a wall clock the test sets; the worker's tick
    (idle closing, offline timer) runs whenever the test says the partition is caught up."""

    def __init__(self, proc: StreamProcessor) -> None:
        self.proc = proc
        self.offset = 0
        self.out = Outputs()

    def send(self, records: list[tuple[bytes, bytes]], wall: float) -> None:
        for key, value in records:
            self.proc.record(0, self.offset, key, value, wall, self.out)
            self.offset += 1

    def idle(self, wall: float) -> None:
        self.out.extend(self.proc.idle(0, wall))
        self.out.extend(self.proc.tick(wall))

    def latest(self, resolution: Resolution) -> dict[tuple[str, int], WindowAggregate]:
        """Each window's highest revision, as the sink's upsert leaves it."""
        got: dict[tuple[str, int], WindowAggregate] = {}
        for c in self.out.aggregates:
            if c.resolution is not resolution:
                continue
            m = c.message()
            key = (m.server_id, int((m.window_start - T0).total_seconds()))
            if key not in got or m.revision >= got[key].revision:
                got[key] = m
        return got


def test_a_host_30_s_behind_the_others_on_its_partition_loses_nothing() -> None:
    run = Run(StreamProcessor(source_topic="raw"))
    for second in range(120):
        wall = BASE + second + 0.5
        # Both hosts send once a second; SLOW's clock (or its path) is 30 s behind FAST's.
        records = [keyed_event(FAST, second)]
        if second >= 30:
            records.append(keyed_event(SLOW, second - 30))
        run.send(records, wall)
        run.idle(wall + 0.4)
    assert run.out.dead_letters == []
    slow = {k[1]: a.count for k, a in run.latest(Resolution.FIVE_SECONDS).items() if k[0] == SLOW}
    # SLOW's windows close by SLOW's own event time: every one but its last is complete.
    assert [slow[s] for s in range(0, 80, 5)] == [5] * 16
    assert all(a.revision == 0 for a in run.latest(Resolution.FIVE_SECONDS).values())


def test_an_agent_cut_off_for_two_minutes_gets_every_window_complete() -> None:
    """FAST keeps sending; SLOW's broker connection is blocked for 120 s, then its buffer
    arrives in order, followed by its live samples. Meanwhile the partition is caught up
    and ticks idle every second."""
    run = Run(StreamProcessor(source_topic="raw"))
    buffered: list[tuple[bytes, bytes]] = []
    for second in range(240):
        wall = BASE + second + 0.5
        records = [keyed_event(FAST, second)]
        if 60 <= second < 180:
            buffered.append(keyed_event(SLOW, second, cpu=second % 50))
        else:
            records = [*buffered, *records, keyed_event(SLOW, second, cpu=second % 50)]
            buffered = []
        run.send(records, wall)
        run.idle(wall + 0.4)
    run.idle(BASE + 4000)  # quiet for an hour: its hour closes too
    assert run.out.dead_letters == []
    fives = run.latest(Resolution.FIVE_SECONDS)
    assert {s: a.count for (sid, s), a in fives.items() if sid == SLOW} == {
        s: 5 for s in range(0, 240, 5)
    }
    # Its buffer is newer than anything it sent before the cut: no window is late, none is
    # emitted twice.
    assert all(c.revision == 0 for c in run.out.aggregates)
    [hour] = [a for (sid, _), a in run.latest(Resolution.ONE_HOUR).items() if sid == SLOW]
    assert hour.count == 240
    assert hour.cpu_usage.avg == sum(s % 50 for s in range(240)) / 240
    # While its samples sat in the agent's buffer SLOW went offline, and came back.
    states = [c.status.value for c in run.out.statuses if c.server_id == SLOW]
    # (and at the end, quiet for an hour, offline again).
    assert states == ["online", "offline", "online", "offline"]


def test_a_late_sample_within_the_horizon_is_a_correction() -> None:
    run = Run(StreamProcessor(source_topic="raw", grace=Grace({"5s": 5, "1h": 5, "1d": 5})))
    run.send([keyed_event(FAST, s, cpu=10) for s in range(0, 20) if s != 2], BASE + 20)
    first = run.latest(Resolution.FIVE_SECONDS)[(FAST, 0)]
    assert (first.count, first.revision) == (4, 0)
    run.send([keyed_event(FAST, 2, cpu=90)], BASE + 21)  # 17 s behind FAST's event time
    corrected = run.latest(Resolution.FIVE_SECONDS)[(FAST, 0)]
    assert (corrected.count, corrected.revision, corrected.cpu_usage.max) == (5, 1, 90)
    assert run.out.dead_letters == []
    run.idle(BASE + 4000)
    [hour] = run.latest(Resolution.ONE_HOUR).values()
    assert hour.count == 20 and hour.cpu_usage.max == 90


def test_a_sample_beyond_the_horizon_goes_to_the_dlq_as_late() -> None:
    run = Run(StreamProcessor(source_topic="raw", lateness_horizon=60))
    run.send([keyed_event(FAST, s) for s in range(100) if s != 45], BASE + 100)
    run.send([keyed_event(FAST, 30)], BASE + 101)  # 69 s behind: within the 60 s horizon? no
    run.send([keyed_event(FAST, 45)], BASE + 102)  # 54 s behind: corrected
    [letter] = run.out.dead_letters
    assert letter.reason is DeadLetterReason.LATE and "horizon" in letter.error
    assert run.latest(Resolution.FIVE_SECONDS)[(FAST, 45)].count == 5
    assert run.proc.counts() == {"late_absorbed": 1, "late_dropped": 1, "duplicates": 0}


def test_overload_delays_windows_and_drops_nothing() -> None:
    """A partition far behind (its backlog keeps growing) is never idle: nothing is closed
    by the clock, and a slow host's samples, however far behind the fast ones, all count."""
    run = Run(StreamProcessor(source_topic="raw"))
    records = []
    for second in range(300):
        records.append(keyed_event(FAST, second))
        if second >= 100:
            records.append(keyed_event(SLOW, second - 100))
    for i in range(0, len(records), 7):  # processed much later than sent, never caught up
        wall = BASE + 1000 + i * 20
        run.send(records[i : i + 7], wall)
        run.out.extend(run.proc.tick(wall, caught_up=()))  # minutes between batches
    assert run.out.dead_letters == []
    slow = run.latest(Resolution.FIVE_SECONDS)
    assert all(a.count == 5 for (sid, _), a in slow.items() if sid == SLOW)
    assert len([k for k in slow if k[0] == SLOW]) == 38  # its last two are still open
    assert [c.status.value for c in run.out.statuses] == ["online", "online"]
