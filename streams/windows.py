"""Event-time tumbling windows per server: the aggregation the stream worker runs.

Pure logic, no Kafka: `PartitionWindows` holds the open windows of one input partition and
closes them by that partition's event time (its watermark: the latest event timestamp seen),
never by arrival order. A 5 s window closes once the watermark passes its end plus the 5 s
grace; an event whose window has already closed is late. Hourly and daily windows are cascaded
from closed 5 s windows: count-weighted, so they equal aggregating the raw events directly
(sums of counts, sums, min of mins, max of maxes, byte sums). Each hourly/daily accumulator
remembers the last 5 s window it absorbed, so replaying 5 s windows after a restart never
counts one twice.

Hourly and daily accumulators outlive the offsets a restart replays, so they are checkpointed
(`checkpoint()` / `restore()`, stored by the worker in a compacted changelog topic): one record
per server holding its open rollups and markers of the rollups it has emitted. A checkpoint
written only in part is safe: `merged_upto` keeps a replayed 5 s window from being counted
twice in a rollup saved after it, and a marker keeps an emitted rollup from being rebuilt from
the replay and emitted again with only part of its data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from schemas import MetricStats, ProcessInfo, RawMetricEvent, Resolution, WindowAggregate

#: The rollups fed by closed 5 s windows, with their sizes in seconds.
_ROLLUPS: Final = ((Resolution.ONE_HOUR, 3600), (Resolution.ONE_DAY, 86400))


def _iso(ts: float) -> str:
    """A UTC timestamp as the message models write it ("...Z")."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class MetricAcc:
    total: float
    lo: float
    hi: float
    last: float

    @classmethod
    def of(cls, v: float) -> MetricAcc:
        return cls(v, v, v, v)

    def add(self, v: float, is_latest: bool) -> None:
        self.total += v
        if v < self.lo:
            self.lo = v
        if v > self.hi:
            self.hi = v
        if is_latest:
            self.last = v

    def stats_json(self, count: int, with_last: bool) -> dict[str, float | None]:
        """`stats()` as the JSON object, without building the model."""
        avg = min(100.0, max(0.0, self.total / count))
        last = self.last if with_last else None
        return {"avg": avg, "min": self.lo, "max": self.hi, "last": last}

    def as_row(self) -> tuple[float, float, float, float]:
        return self.total, self.lo, self.hi, self.last

    def merge(self, other: MetricAcc, other_is_latest: bool) -> None:
        self.total += other.total
        self.lo = min(self.lo, other.lo)
        self.hi = max(self.hi, other.hi)
        if other_is_latest:
            self.last = other.last

    def stats(self, count: int, with_last: bool) -> MetricStats:
        # Clamp: a mean of values in 0..100 can leave the range by a rounding error.
        avg = min(100.0, max(0.0, self.total / count))
        last = self.last if with_last else None
        return MetricStats(avg=avg, min=self.lo, max=self.hi, last=last)


@dataclass(slots=True)
class WindowAcc:
    """One open window of one server."""

    server_id: str
    start: int  # epoch seconds
    size: int
    count: int
    cpu: MetricAcc
    mem: MetricAcc
    disk: MetricAcc
    rx: int
    tx: int
    last_ts: float
    processes: list[ProcessInfo] | None
    first_offset: int | None = None
    #: Start of the latest 5 s window merged in (hourly/daily only): replay guard.
    merged_upto: int = -1

    @classmethod
    def from_event(cls, e: RawMetricEvent, start: int, size: int, offset: int | None) -> WindowAcc:
        return cls(
            server_id=e.server_id,
            start=start,
            size=size,
            count=1,
            cpu=MetricAcc.of(e.cpu_usage),
            mem=MetricAcc.of(e.memory_usage),
            disk=MetricAcc.of(e.disk_usage),
            rx=e.network_rx,
            tx=e.network_tx,
            last_ts=e.timestamp.timestamp(),
            processes=list(e.processes),
            first_offset=offset,
        )

    @property
    def end(self) -> int:
        return self.start + self.size

    def add(self, e: RawMetricEvent, offset: int | None) -> None:
        ts = e.timestamp.timestamp()
        latest = ts >= self.last_ts
        self.count += 1
        self.cpu.add(e.cpu_usage, latest)
        self.mem.add(e.memory_usage, latest)
        self.disk.add(e.disk_usage, latest)
        self.rx += e.network_rx
        self.tx += e.network_tx
        if latest:
            self.last_ts = ts
            self.processes = list(e.processes)
        if offset is not None and (self.first_offset is None or offset < self.first_offset):
            self.first_offset = offset

    def absorb(self, w: WindowAcc) -> None:
        """Merge a closed 5 s window into this hourly/daily one (once per 5 s window)."""
        if w.start <= self.merged_upto:
            return
        latest = w.last_ts >= self.last_ts
        self.count += w.count
        self.cpu.merge(w.cpu, latest)
        self.mem.merge(w.mem, latest)
        self.disk.merge(w.disk, latest)
        self.rx += w.rx
        self.tx += w.tx
        if latest:
            self.last_ts = w.last_ts
        self.merged_upto = w.start

    @classmethod
    def seeded_by(cls, w: WindowAcc, start: int, size: int) -> WindowAcc:
        acc = cls(
            server_id=w.server_id,
            start=start,
            size=size,
            count=w.count,
            cpu=MetricAcc(w.cpu.total, w.cpu.lo, w.cpu.hi, w.cpu.last),
            mem=MetricAcc(w.mem.total, w.mem.lo, w.mem.hi, w.mem.last),
            disk=MetricAcc(w.disk.total, w.disk.lo, w.disk.hi, w.disk.last),
            rx=w.rx,
            tx=w.tx,
            last_ts=w.last_ts,
            processes=None,
        )
        acc.merged_upto = w.start
        return acc

    def to_aggregate(self, resolution: Resolution, emitted_at: datetime) -> WindowAggregate:
        """The closed window as a validated message (the reference `to_json_bytes` is
        tested against)."""
        five = resolution is Resolution.FIVE_SECONDS
        return WindowAggregate(
            server_id=self.server_id,
            resolution=resolution,
            window_start=datetime.fromtimestamp(self.start, UTC),
            window_end=datetime.fromtimestamp(self.end, UTC),
            count=self.count,
            cpu_usage=self.cpu.stats(self.count, five),
            memory_usage=self.mem.stats(self.count, five),
            disk_usage=self.disk.stats(self.count, five),
            network_rx=self.rx,
            network_tx=self.tx,
            processes=self.processes if five else None,
            last_event_at=datetime.fromtimestamp(self.last_ts, UTC),
            emitted_at=emitted_at,
        )

    def to_json_bytes(self, resolution: Resolution, emitted_at: str) -> bytes:
        """The closed window as `WindowAggregate` JSON, written directly: building the
        pydantic model costs more than the whole windowing of its events."""
        five = resolution is Resolution.FIVE_SECONDS
        n = self.count
        processes: list[dict[str, Any]] | None = None
        if five and self.processes is not None:
            processes = [
                {
                    "pid": p.pid,
                    "name": p.name,
                    "cpu_usage": p.cpu_usage,
                    "memory_usage": p.memory_usage,
                }
                for p in self.processes
            ]
        doc = {
            "server_id": self.server_id,
            "resolution": resolution,
            "window_start": _iso(self.start),
            "window_end": _iso(self.start + self.size),
            "count": n,
            "cpu_usage": self.cpu.stats_json(n, five),
            "memory_usage": self.mem.stats_json(n, five),
            "disk_usage": self.disk.stats_json(n, five),
            "network_rx": self.rx,
            "network_tx": self.tx,
            "processes": processes,
            "last_event_at": _iso(self.last_ts),
            "emitted_at": emitted_at,
        }
        return orjson.dumps(doc)

    def to_state(self) -> list[float]:
        """A rollup as a checkpoint row (see `from_state`)."""
        return [
            self.start,
            self.size,
            self.count,
            *self.cpu.as_row(),
            *self.mem.as_row(),
            *self.disk.as_row(),
            self.rx,
            self.tx,
            self.last_ts,
            self.merged_upto,
        ]

    @classmethod
    def from_state(cls, server_id: str, row: list[float]) -> WindowAcc:
        start, size, count = int(row[0]), int(row[1]), int(row[2])
        cpu, mem, disk = (MetricAcc(*row[i : i + 4]) for i in (3, 7, 11))
        acc = cls(
            server_id=server_id,
            start=start,
            size=size,
            count=count,
            cpu=cpu,
            mem=mem,
            disk=disk,
            rx=int(row[15]),
            tx=int(row[16]),
            last_ts=row[17],
            processes=None,
        )
        acc.merged_upto = int(row[18])
        return acc


@dataclass(frozen=True)
class Grace:
    """Seconds a window waits past its end for out-of-order events, per resolution."""

    five_seconds: float = 5.0
    one_hour: float = 5.0
    one_day: float = 5.0

    def __post_init__(self) -> None:
        # An hourly/daily window must outlive its last 5 s window, which feeds it on closing.
        if self.one_hour < self.five_seconds or self.one_day < self.five_seconds:
            raise ValueError("hourly and daily grace must be at least the 5 s grace")


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A window that just closed, on its way to its aggregate topic."""

    acc: WindowAcc
    resolution: Resolution
    emitted_at: str  # ISO 8601, UTC

    @property
    def server_id(self) -> str:
        return self.acc.server_id

    def to_json_bytes(self) -> bytes:
        return self.acc.to_json_bytes(self.resolution, self.emitted_at)

    def message(self) -> WindowAggregate:
        """The aggregate as a validated message (what a consumer of the topic reads)."""
        return WindowAggregate.model_validate_json(self.to_json_bytes())


#: A rollup window: (resolution, start).
RollupKey = tuple[Resolution, int]


@dataclass
class ServerRollups:
    """A server's checkpointed rollups in one partition: open accumulators and markers of the
    ones already emitted (with the event time after which no replay can rebuild them)."""

    rollups: dict[RollupKey, WindowAcc] = field(default_factory=dict)
    emitted: dict[RollupKey, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "rollups": [[r.value, *acc.to_state()] for (r, _), acc in self.rollups.items()],
            "emitted": [[r.value, start, until] for (r, start), until in self.emitted.items()],
        }

    @classmethod
    def from_json(cls, server_id: str, data: dict[str, list[list[float | str]]]) -> ServerRollups:
        state = cls()
        for res, *row in data.get("rollups", []):
            acc = WindowAcc.from_state(server_id, [float(x) for x in row])
            state.rollups[(Resolution(str(res)), acc.start)] = acc
        for res, start, until in data.get("emitted", []):
            state.emitted[(Resolution(str(res)), int(start))] = float(until)
        return state


@dataclass
class PartitionWindows:
    """The open windows of one input partition, closed by its event time."""

    grace: Grace = field(default_factory=Grace)
    watermark: float = -math.inf
    late: int = 0
    _five: dict[int, dict[str, WindowAcc]] = field(default_factory=dict)
    _rollups: dict[Resolution, dict[int, dict[str, WindowAcc]]] = field(
        default_factory=lambda: {Resolution.ONE_HOUR: {}, Resolution.ONE_DAY: {}}
    )
    #: Rollups already emitted, per server: (resolution, start) → end + grace.
    _emitted: dict[str, dict[RollupKey, float]] = field(default_factory=dict)
    #: Servers whose rollups changed since the last checkpoint.
    _dirty: set[str] = field(default_factory=set)

    def add(self, e: RawMetricEvent, offset: int | None = None, *, count_late: bool = True) -> bool:
        """Put an event in its 5 s window. False (and counted) if the window already closed."""
        ts = e.timestamp.timestamp()
        start = int(ts // 5) * 5
        if start + 5 + self.grace.five_seconds <= self.watermark:
            if count_late:
                self.late += 1
            return False
        bucket = self._five.setdefault(start, {})
        acc = bucket.get(e.server_id)
        if acc is None:
            bucket[e.server_id] = WindowAcc.from_event(e, start, 5, offset)
        else:
            acc.add(e, offset)
        if ts > self.watermark:
            self.watermark = ts
        return True

    def advance_to(self, t: float) -> None:
        """Move the watermark to `t` if later (the wall clock, for an idle caught-up partition)."""
        if t > self.watermark:
            self.watermark = t

    def close(self, emitted_at: datetime) -> list[ClosedWindow]:
        """Close every window the watermark has passed (plus grace); oldest first."""
        out: list[ClosedWindow] = []
        wm = self.watermark
        stamp = _iso(emitted_at.timestamp())
        five = Resolution.FIVE_SECONDS
        for start in sorted(s for s in self._five if s + 5 + self.grace.five_seconds <= wm):
            for acc in self._five.pop(start).values():
                out.append(ClosedWindow(acc, five, stamp))
                self._cascade(acc)
        for (resolution, size), grace in zip(
            _ROLLUPS, (self.grace.one_hour, self.grace.one_day), strict=True
        ):
            windows = self._rollups[resolution]
            for start in sorted(s for s in windows if s + size + grace <= wm):
                for server_id, acc in windows.pop(start).items():
                    out.append(ClosedWindow(acc, resolution, stamp))
                    self._emitted.setdefault(server_id, {})[(resolution, start)] = (
                        start + size + grace
                    )
                    self._dirty.add(server_id)
        return out

    def _cascade(self, w: WindowAcc) -> None:
        emitted = self._emitted.get(w.server_id)
        for resolution, size in _ROLLUPS:
            start = w.start // size * size
            if emitted is not None and (resolution, start) in emitted:
                continue  # a replayed 5 s window of a rollup emitted before the restart
            bucket = self._rollups[resolution].setdefault(start, {})
            acc = bucket.get(w.server_id)
            if acc is None:
                bucket[w.server_id] = WindowAcc.seeded_by(w, start, size)
            else:
                acc.absorb(w)
        self._dirty.add(w.server_id)

    def checkpoint(self, settled_upto: float) -> list[tuple[str, ServerRollups]]:
        """The state of every server changed since the last checkpoint.

        `settled_upto` is the watermark of the last checkpoint known to be stored: markers of
        rollups that ended (plus grace) before it are dropped, as any restore from then on
        has a watermark that makes their 5 s windows late.
        """
        for server_id, emitted in list(self._emitted.items()):
            settled = [k for k, until in emitted.items() if until <= settled_upto]
            for k in settled:
                del emitted[k]
            if settled:
                self._dirty.add(server_id)
            if not emitted:
                del self._emitted[server_id]
        out = [(server_id, self.server_state(server_id)) for server_id in self._dirty]
        self._dirty.clear()
        return out

    def server_state(self, server_id: str) -> ServerRollups:
        state = ServerRollups(emitted=dict(self._emitted.get(server_id, {})))
        for resolution, windows in self._rollups.items():
            for start, bucket in windows.items():
                acc = bucket.get(server_id)
                if acc is not None:
                    state.rollups[(resolution, start)] = acc
        return state

    def restore(self, watermark: float, servers: dict[str, ServerRollups]) -> None:
        """Start from a checkpoint: its watermark and every server's rollups and markers."""
        self.watermark = watermark
        for server_id, state in servers.items():
            for (resolution, start), acc in state.rollups.items():
                self._rollups[resolution].setdefault(start, {})[server_id] = acc
            if state.emitted:
                self._emitted[server_id] = dict(state.emitted)

    def committable_offset(self, next_offset: int) -> int:
        """The offset from which a restart must replay to rebuild the open 5 s windows."""
        firsts = [
            a.first_offset
            for bucket in self._five.values()
            for a in bucket.values()
            if a.first_offset is not None
        ]
        return min([*firsts, next_offset])

    def open_windows(self) -> int:
        return sum(len(b) for b in self._five.values())
