"""Unit tests of lateness, with an explicit clock: event time is kept per server, so a host
behind the others on its partition loses nothing; a host cut off from the broker while the
rest of the fleet keeps sending gets every window complete once its buffer arrives; late
samples within the horizon come out as corrections; only samples beyond it are dead-lettered.
"""

from __future__ import annotations

import json
from datetime import timedelta

from schemas import DeadLetterReason, Resolution, WindowAggregate
from streams.processor import Outputs, StreamProcessor
from streams.windows import Grace
from tests.factories import event_dict
from tests.streams.test_windows import SERVERS, T0

BASE = T0.timestamp()
FAST, SLOW = SERVERS


def raw(server: str, at: float, cpu: float = 10.0) -> tuple[bytes, bytes]:
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
        records = [raw(FAST, second)]
        if second >= 30:
            records.append(raw(SLOW, second - 30))
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
        records = [raw(FAST, second)]
        if 60 <= second < 180:
            buffered.append(raw(SLOW, second, cpu=second % 50))
        else:
            records = [*buffered, *records, raw(SLOW, second, cpu=second % 50)]
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
    run = Run(StreamProcessor(source_topic="raw", grace=Grace(5, 5, 5)))
    run.send([raw(FAST, s, cpu=10) for s in range(0, 20) if s != 2], BASE + 20)
    first = run.latest(Resolution.FIVE_SECONDS)[(FAST, 0)]
    assert (first.count, first.revision) == (4, 0)
    run.send([raw(FAST, 2, cpu=90)], BASE + 21)  # 17 s behind FAST's event time
    corrected = run.latest(Resolution.FIVE_SECONDS)[(FAST, 0)]
    assert (corrected.count, corrected.revision, corrected.cpu_usage.max) == (5, 1, 90)
    assert run.out.dead_letters == []
    run.idle(BASE + 4000)
    [hour] = run.latest(Resolution.ONE_HOUR).values()
    assert hour.count == 20 and hour.cpu_usage.max == 90


def test_a_sample_beyond_the_horizon_goes_to_the_dlq_as_late() -> None:
    run = Run(StreamProcessor(source_topic="raw", lateness_horizon=60))
    run.send([raw(FAST, s) for s in range(100)], BASE + 100)
    run.send([raw(FAST, 30)], BASE + 101)  # 69 s behind: within the 60 s horizon? no
    run.send([raw(FAST, 45)], BASE + 102)  # 54 s behind: corrected
    [letter] = run.out.dead_letters
    assert letter.reason is DeadLetterReason.LATE and "horizon" in letter.error
    assert run.latest(Resolution.FIVE_SECONDS)[(FAST, 45)].count == 6
    assert run.proc.counts() == {"late_absorbed": 1, "late_dropped": 1}


def test_overload_delays_windows_and_drops_nothing() -> None:
    """A partition far behind (its backlog keeps growing) is never idle: nothing is closed
    by the clock, and a slow host's samples, however far behind the fast ones, all count."""
    run = Run(StreamProcessor(source_topic="raw"))
    records = []
    for second in range(300):
        records.append(raw(FAST, second))
        if second >= 100:
            records.append(raw(SLOW, second - 100))
    for i in range(0, len(records), 7):  # processed much later than sent, never caught up
        wall = BASE + 1000 + i * 20
        run.send(records[i : i + 7], wall)
        run.out.extend(run.proc.tick(wall, caught_up=()))  # minutes between batches
    assert run.out.dead_letters == []
    slow = run.latest(Resolution.FIVE_SECONDS)
    assert all(a.count == 5 for (sid, _), a in slow.items() if sid == SLOW)
    assert len([k for k in slow if k[0] == SLOW]) == 38  # its last two are still open
    assert [c.status.value for c in run.out.statuses] == ["online", "online"]
