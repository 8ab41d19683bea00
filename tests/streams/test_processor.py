"""Unit tests of the stream processor: DLQ reasons with original bytes, lateness, status
changes, idle partitions closing by the wall clock, committable offsets."""

from __future__ import annotations

import json
from datetime import timedelta

from schemas import MAX_RAW_EVENT_BYTES, DeadLetterReason, Resolution, ServerState
from streams.processor import StreamProcessor
from tests.factories import event_dict
from tests.streams.test_windows import SERVERS, T0

BASE = T0.timestamp()


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
    assert p.counts() == {"late_absorbed": 0, "late_dropped": 1}
    ok = p.record(0, 3, None, raw(0, 13), BASE)
    assert ok.dead_letters == []
    # Another server on the partition is judged by its own event time: nothing is late.
    assert p.record(0, 4, None, raw(1, 2), BASE).dead_letters == []


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
