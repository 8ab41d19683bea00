"""The alert state machine, with no I/O: windows, status changes, the clock and the rules go
in; changed states and firing/resolved events come out (`take()`).

Per rule and server an alert is inactive (no state kept), pending (the condition holds, not yet
for long enough) or firing; resolving it emits a resolved event and makes it inactive again.

- A threshold alert is judged on each closed window of its rule's resolution, in event time: a
  window no newer than the last one judged (a late correction, a replay) changes nothing.
- An absence alert is judged against the clock (`tick`), only when the caller has read all
  there is (else a catching-up evaluator would call every server silent). It is pending once
  the status topic says the server is offline or no 5 s window came for `absence_grace`, and
  fires once the server has been silent `for_seconds` since it was last heard of. Anything
  newer heard of the server resolves it.
- Rules edited or deleted (`set_rules`): their alerts are resolved at once (reason
  `rule_edited` or `rule_deleted`); an edited rule is judged afresh from its next window, as
  Prometheus does with a changed rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from alerts.rules import Rule, RuleKind, event_id, fingerprint
from schemas.messages import (
    AlertEvent,
    AlertStatus,
    ServerState,
    ServerStatusChange,
    WindowAggregate,
)
from schemas.resolutions import Resolution

Key = tuple[int, str]  # (rule id, server id)


@dataclass(frozen=True, slots=True)
class AlertState:
    """A pending or firing alert: what `alert_state` keeps."""

    rule_id: int
    server_id: str
    rule_revision: int
    state: Literal["pending", "firing"]
    since: datetime  # threshold: start of the first crossing window; absence: last heard of
    fired_at: datetime | None = None
    last_window_end: datetime | None = None
    value: float | None = None

    @property
    def key(self) -> Key:
        return (self.rule_id, self.server_id)


@dataclass
class Changes:
    """What `take()` hands over: to be stored together, with the input position."""

    states: list[AlertState] = field(default_factory=list)
    removed: list[Key] = field(default_factory=list)
    events: list[AlertEvent] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.states or self.removed or self.events)


class Engine:
    def __init__(
        self,
        rules: Iterable[Rule] = (),
        states: Iterable[AlertState] = (),
        *,
        absence_grace: float = 10.0,
    ) -> None:
        self.rules: dict[int, Rule] = {r.id: r for r in rules}
        self.states: dict[Key, AlertState] = {s.key: s for s in states}
        self.absence_grace = timedelta(seconds=absence_grace)
        #: Server → when it was last heard of (event time), and which are offline.
        self.last_seen: dict[str, datetime] = {}
        self.offline: set[str] = set()
        #: The servers an absence rule of open scope judges (the inventory).
        self.servers: set[str] = set()
        self._changed: dict[Key, AlertState | None] = {}
        self._events: list[AlertEvent] = []
        # States of rules no longer known are resolved by the first `set_rules`.
        self._by_kind: dict[RuleKind, list[Rule]] = {}
        self._index()

    def _index(self) -> None:
        self._by_kind = {kind: [] for kind in RuleKind}
        for rule in self.rules.values():
            self._by_kind[rule.kind].append(rule)

    # -- inputs ----------------------------------------------------------------------------
    def heard(self, server_id: str, at: datetime) -> None:
        """`server_id` was heard of at `at` (event time): resolves its absence alerts."""
        seen = self.last_seen.get(server_id)
        if seen is None or at > seen:
            self.last_seen[server_id] = at
        for rule in self._by_kind[RuleKind.ABSENCE]:
            state = self.states.get((rule.id, server_id))
            if state is not None and at > state.since:
                self._clear(rule, state, at, "recovered", value=None)

    def window(self, window: WindowAggregate) -> None:
        sid = window.server_id
        if window.resolution == Resolution.FIVE_SECONDS:
            self.offline.discard(sid)
            self.heard(sid, window.last_event_at)
        for rule in self._by_kind[RuleKind.THRESHOLD]:
            if rule.resolution == window.resolution and rule.covers(sid):
                self._judge(rule, window)

    def status(self, change: ServerStatusChange) -> None:
        sid = change.server_id
        if change.status is ServerState.OFFLINE:
            self.offline.add(sid)
            seen = self.last_seen.get(sid)
            if seen is None or change.last_event_at > seen:
                self.last_seen[sid] = change.last_event_at
        else:
            self.offline.discard(sid)
            self.heard(sid, change.last_event_at)

    def tick(self, now: datetime) -> None:
        """Judge the absence rules at `now` (call only when all input so far is read)."""
        for rule in self._by_kind[RuleKind.ABSENCE]:
            scope = self.servers if rule.servers is None else rule.servers
            duration = timedelta(seconds=rule.for_seconds)
            for sid in scope:
                seen = self.last_seen.get(sid)
                if seen is None:
                    continue  # never heard of: not yet reporting, not absent
                state = self.states.get((rule.id, sid))
                silent = now - seen
                if state is None:
                    if sid in self.offline or silent >= self.absence_grace:
                        state = AlertState(rule.id, sid, rule.revision, "pending", since=seen)
                        self._put(state)
                    else:
                        continue
                if state.state == "pending" and silent >= duration:
                    fired = state.since + duration
                    state = replace(
                        state, state="firing", fired_at=fired, value=silent.total_seconds()
                    )
                    self._put(state)
                    self._emit(rule, state, AlertStatus.FIRING, value=silent.total_seconds())

    def set_rules(self, rules: Iterable[Rule], now: datetime) -> None:
        """The rules as now stored: alerts of a deleted or edited rule are resolved at `now`,
        and so are those of servers a rule no longer covers."""
        new = {r.id: r for r in rules}
        for key, state in list(self.states.items()):
            current = new.get(state.rule_id)
            if current is not None and current.revision == state.rule_revision:
                continue
            # The rule as the alert was sent, if still known (after a restart, only the new).
            sent = self.rules.get(state.rule_id) or current
            if sent is None:
                self._drop(key)
            else:
                reason = "rule_deleted" if current is None else "rule_edited"
                self._clear(sent, state, now, reason, value=state.value)
        self.rules = new
        self._index()

    def set_servers(self, servers: Iterable[str], now: datetime) -> None:
        """The inventory: absence alerts of servers deleted from it are resolved."""
        self.servers = set(servers)
        for (rule_id, sid), state in list(self.states.items()):
            rule = self.rules.get(rule_id)
            if rule is not None and rule.kind is RuleKind.ABSENCE and sid not in self.servers:
                self._clear(rule, state, now, "out_of_scope", value=None)

    # -- output ----------------------------------------------------------------------------
    def take(self) -> Changes:
        """Changed and removed states and the events since the last `take()`."""
        out = Changes(events=self._events)
        for key, state in self._changed.items():
            if state is None:
                out.removed.append(key)
            else:
                out.states.append(state)
        self._changed, self._events = {}, []
        return out

    def firing(self) -> list[tuple[Rule, AlertState]]:
        """Every firing alert, with its rule (what is re-sent to Alertmanager)."""
        found = []
        for state in self.states.values():
            rule = self.rules.get(state.rule_id)
            if state.state == "firing" and rule is not None:
                found.append((rule, state))
        return found

    # -- the state machine -----------------------------------------------------------------
    def _judge(self, rule: Rule, window: WindowAggregate) -> None:
        key = (rule.id, window.server_id)
        state = self.states.get(key)
        last = None if state is None else state.last_window_end
        if last is not None and window.window_end <= last:
            return  # a correction or a replay of a window already judged
        value = rule.statistic(window)
        if value is None:
            return
        if not rule.crosses(value):
            if state is not None:
                self._clear(rule, state, window.window_start, "recovered", value=value)
            return
        if state is None:
            state = AlertState(
                rule.id, window.server_id, rule.revision, "pending", since=window.window_start
            )
        state = replace(state, last_window_end=window.window_end, value=value)
        if state.state == "pending" and (
            window.window_end - state.since >= timedelta(seconds=rule.for_seconds)
        ):
            state = replace(state, state="firing", fired_at=window.window_end)
            self._put(state)
            self._emit(rule, state, AlertStatus.FIRING, value=value)
        else:
            self._put(state)

    def _clear(
        self, rule: Rule, state: AlertState, at: datetime, reason: str, *, value: float | None
    ) -> None:
        if state.state == "firing":
            self._emit(rule, state, AlertStatus.RESOLVED, value=value, ends_at=at, reason=reason)
        self._drop(state.key)

    def _put(self, state: AlertState) -> None:
        self.states[state.key] = state
        self._changed[state.key] = state

    def _drop(self, key: Key) -> None:
        if self.states.pop(key, None) is not None:
            self._changed[key] = None

    def _emit(
        self,
        rule: Rule,
        state: AlertState,
        status: AlertStatus,
        *,
        value: float | None,
        ends_at: datetime | None = None,
        reason: str | None = None,
    ) -> None:
        assert state.fired_at is not None
        fp = fingerprint(rule.id, state.server_id)
        if status is AlertStatus.FIRING:
            summary = f"{rule.name}: server {state.server_id} {rule.describe()}"
        else:
            summary = f"{rule.name}: server {state.server_id} resolved ({reason})"
        if ends_at is not None and ends_at < state.fired_at:
            ends_at = state.fired_at
        self._events.append(
            AlertEvent(
                event_id=event_id(fp, status.value, state.fired_at, state.rule_revision),
                fingerprint=fp,
                status=status,
                rule_id=rule.id,
                rule_name=rule.name,
                rule_revision=state.rule_revision,
                kind=rule.kind.value,
                severity=rule.severity,
                server_id=state.server_id,
                starts_at=state.fired_at,
                ends_at=ends_at,
                value=value,
                summary=summary[:1024],
                reason=reason,
                labels=rule.labels(state.server_id),
                emitted_at=datetime.now(UTC),
            )
        )
