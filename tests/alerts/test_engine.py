"""Unit: the alert state machine (no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from alerts.engine import Engine
from alerts.rules import Op, Rule, RuleKind, RuleSpec
from schemas.messages import (
    AlertStatus,
    MetricStats,
    ServerState,
    ServerStatusChange,
    WindowAggregate,
)
from schemas.resolutions import Resolution

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
SID = str(uuid.uuid4())


def threshold(
    rule_id: int = 1, *, value: float = 90.0, for_seconds: int = 30, revision: int = 1, **kw: object
) -> Rule:
    fields: dict[str, object] = {
        "metric": "cpu_usage",
        "stat": "avg",
        "resolution": "5s",
        "op": Op.GT,
        "value": value,
    }
    fields.update(kw)
    return Rule(
        id=rule_id,
        name="cpu high",
        kind=RuleKind.THRESHOLD,
        severity="warning",
        for_seconds=for_seconds,
        revision=revision,
        servers=None,
        **fields,  # type: ignore[arg-type]
    )


def absence(rule_id: int = 2, for_seconds: int = 30) -> Rule:
    return Rule(
        id=rule_id,
        name="host absent",
        kind=RuleKind.ABSENCE,
        severity="critical",
        for_seconds=for_seconds,
        revision=1,
        servers=None,
    )


def window(start: datetime, cpu: float, sid: str = SID, seconds: int = 5) -> WindowAggregate:
    stats = MetricStats(avg=cpu, min=cpu, max=cpu, last=cpu)
    return WindowAggregate(
        server_id=sid,
        resolution=Resolution.FIVE_SECONDS if seconds == 5 else Resolution.ONE_HOUR,
        window_start=start,
        window_end=start + timedelta(seconds=seconds),
        count=seconds,
        cpu_usage=stats,
        memory_usage=stats,
        disk_usage=stats,
        network_rx=0,
        network_tx=0,
        last_event_at=start + timedelta(seconds=seconds - 1),
        emitted_at=start + timedelta(seconds=seconds + 1),
    )


def feed(engine: Engine, values: list[float], start: datetime = T0) -> None:
    for i, v in enumerate(values):
        engine.window(window(start + timedelta(seconds=5 * i), v))


def test_fires_after_for_and_resolves() -> None:
    engine = Engine([threshold()])
    feed(engine, [95.0] * 5)  # 25 s of crossing: pending
    changes = engine.take()
    assert not changes.events
    assert [s.state for s in changes.states] == ["pending"]
    feed(engine, [95.0], start=T0 + timedelta(seconds=25))  # 30 s: fires
    (fired,) = engine.take().events
    assert fired.status is AlertStatus.FIRING
    assert fired.starts_at == T0 + timedelta(seconds=30)
    assert fired.labels["alertname"] == "cpu high"
    feed(engine, [95.0, 50.0], start=T0 + timedelta(seconds=30))
    (resolved,) = engine.take().events
    assert resolved.status is AlertStatus.RESOLVED
    assert resolved.reason == "recovered"
    assert resolved.fingerprint == fired.fingerprint
    assert resolved.ends_at == T0 + timedelta(seconds=35)
    assert not engine.states


def test_a_dip_resets_pending() -> None:
    engine = Engine([threshold()])
    feed(engine, [95, 95, 95, 50, 95, 95, 95, 95, 95])
    assert not engine.take().events
    assert engine.states[(1, SID)].since == T0 + timedelta(seconds=20)


def test_old_windows_and_replays_change_nothing() -> None:
    engine = Engine([threshold(for_seconds=0)])
    feed(engine, [95.0])
    (fired,) = engine.take().events
    feed(engine, [10.0])  # the same window again, corrected: already judged
    assert not engine.take()
    # Replaying from stored state gives the same event ids.
    replay = Engine([threshold(for_seconds=0)])
    feed(replay, [95.0])
    assert replay.take().events[0].event_id == fired.event_id


def test_edit_resolves_and_starts_afresh() -> None:
    engine = Engine([threshold(for_seconds=0)])
    feed(engine, [95.0])
    engine.take()
    engine.set_rules([threshold(for_seconds=0, value=99.0, revision=2)], T0 + timedelta(minutes=1))
    (resolved,) = engine.take().events
    assert (resolved.status, resolved.reason) == (AlertStatus.RESOLVED, "rule_edited")
    assert not engine.states
    engine.set_rules([], T0)
    assert not engine.take()


def test_absence_fires_when_silent_and_resolves_when_heard() -> None:
    engine = Engine([absence()], absence_grace=10)
    engine.set_servers([SID], T0)
    feed(engine, [10.0])  # last heard of at T0 + 4 s
    engine.tick(T0 + timedelta(seconds=10))
    assert not engine.take()
    engine.tick(T0 + timedelta(seconds=15))  # 11 s silent: pending
    assert [s.state for s in engine.take().states] == ["pending"]
    engine.tick(T0 + timedelta(seconds=35))
    (fired,) = engine.take().events
    assert fired.starts_at == T0 + timedelta(seconds=34)
    engine.status(
        ServerStatusChange(
            server_id=SID,
            status=ServerState.ONLINE,
            last_event_at=T0 + timedelta(seconds=60),
            changed_at=T0 + timedelta(seconds=61),
        )
    )
    (resolved,) = engine.take().events
    assert resolved.status is AlertStatus.RESOLVED


def test_offline_status_makes_absence_pending_at_once() -> None:
    engine = Engine([absence(for_seconds=60)])
    engine.set_servers([SID], T0)
    engine.status(
        ServerStatusChange(
            server_id=SID, status=ServerState.OFFLINE, last_event_at=T0, changed_at=T0
        )
    )
    engine.tick(T0 + timedelta(seconds=1))
    assert [s.state for s in engine.take().states] == ["pending"]


def test_percentile_rule_on_hourly_windows_uses_the_sketch_stat() -> None:
    rule = threshold(stat="max", resolution="1h", for_seconds=0)
    engine = Engine([rule])
    engine.window(window(T0, 10.0))  # a 5 s window: not this rule's
    engine.window(window(T0, 97.0, seconds=3600))
    (fired,) = engine.take().events
    assert fired.value == 97.0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "kind": "threshold", "op": ">", "value": 1}, "metric"),
        ({"name": "x", "kind": "threshold", "metric": "cpu_usage", "value": 1}, "op"),
        (
            {
                "name": "x",
                "kind": "threshold",
                "metric": "cpu_usage",
                "op": ">",
                "value": 1,
                "stat": "p99",
            },
            "stat",
        ),
        ({"name": "x", "kind": "absence", "for_seconds": 0}, "for_seconds"),
        ({"name": "x", "kind": "absence", "for_seconds": 5, "metric": "cpu_usage"}, "metric"),
        ({"name": "x", "kind": "sideways"}, "kind"),
    ],
)
def test_invalid_rules_name_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        RuleSpec.model_validate(body)
    assert field in str(err.value)
