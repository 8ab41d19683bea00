"""Event-time tumbling windows per server: the aggregation the stream worker runs.

Pure logic, no Kafka. `PartitionWindows` holds the windows of one input partition, one
`ServerWindows` per server, and every server keeps its own event time (the latest sample
timestamp it has sent). A server's window closes when *its* event time passes the window's
end plus the grace, so a host whose clock lags, or whose path is slow, is judged against
itself, never against the fastest host on its partition. A server that has gone quiet has
its event time carried forward by the wall clock (`idle()`, called by the worker only when
the partition has nothing fetched and unprocessed), so its last windows still close.

Closing is decided sample by sample: the sample that moves a server's event time past a
window's end plus grace closes it then, so what a window holds never depends on how records
were batched. Hourly and daily windows are cascaded from closed 5 s windows (count-weighted:
sums of counts, sums, min of mins, max of maxes, byte sums), so they equal aggregating the
samples directly, and close by the same rule with their own grace.

A sample whose 5 s window has already closed is late. Within the lateness horizon (behind the
server's event time) it is absorbed: the window's aggregate is re-opened, the sample added,
and the window emitted again, complete, with the next revision number; the hourly and daily
windows take the sample directly (every statistic only grows with added samples, so nothing
is retracted) and are emitted again too if they had been. To make that possible a closed 5 s
window is kept, packed, until it falls behind the horizon; emitted rollups likewise. Only a
sample older than the horizon (or whose window was released after the server had been quiet
for longer than the horizon) is refused.

State for a restart, written by the worker to a compacted changelog (`checkpoint()` /
`restore()`): one record per server (event time, closing time, open and emitted rollups, and
`covered`, the partition offset its state accounts for) and one per kept closed 5 s window
(with the highest offset it holds). Records of a partition go to one changelog partition in
order, so any record durable implies every earlier one is. On a replay, a record below its
server's `covered` whose window the restored state has closed is already accounted for and
skipped; one whose window is still open rebuilds it (open windows are never folded into a
rollup, so nothing is counted twice). A server's record is written again only when what it
holds changes (a window closes, a late sample comes), not for every sample: a sample that
only fills an open window is replayed after a restart whatever `covered` says, so a `covered`
that lags costs nothing, and the checkpoint writes a record for a server about once per 5 s
window instead of once per checkpoint.

A sample is one server's at one timestamp: a second record with the same server and
timestamp (a producer retrying with a new producer id, an agent's spool re-sent after a
crash) is a duplicate, dropped and counted (`duplicates`), never dead-lettered (nothing is
lost, and the sender did nothing wrong). The first to arrive wins, whatever values the later
one carries: a window is never retracted, and the first was emitted already. Each 5 s window
holds the timestamps it has taken (`WindowAcc.seen`), while open, while kept and in its
changelog record, so a duplicate is recognised until its window falls behind the horizon
(past it, it is refused as late like any sample), and after a restart.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from runtime.errors import FleetPulseError
from schemas import (
    MetricStats,
    ProcessInfo,
    RawMetricEvent,
    Resolution,
    WindowAggregate,
    sketch,
)
from schemas.resolutions import BASE as _BASE_ROW
from schemas.resolutions import RESOLUTIONS, per_resolution

# The resolutions table, resolved once into constants: the hot path reads no table.
#: The resolution windowed from the samples (5 s), and its size.
BASE: Final = Resolution(_BASE_ROW.name)
SIZE: Final = _BASE_ROW.seconds
#: The rollups fed by closed 5 s windows, with their sizes.
ROLLUPS: Final = tuple((Resolution(r.name), r.seconds) for r in RESOLUTIONS[1:])
#: Version of the changelog records this worker writes (`"v"` in each); bumped whenever a
#: record's shape changes, so old state is never misread. Versions 2 and 3 are read too (and
#: the release before them, version 1, see `restore_v1`); any other version is refused.
#: Version 4 added the timestamps a kept 5 s window holds (`WindowAcc.seen`), version 5 the
#: quantile sketch of each metric of the rollups.
STATE_VERSION: Final = 5
#: The versions whose records have named fields (version 3 is version 4 without the seen
#: timestamps, version 4 is 5 without the sketches, read the same way: a window restored
#: from one has no sketch, and its rollups emit no quantiles).
NAMED_VERSIONS: Final = (3, 4, STATE_VERSION)
#: The last version whose records were positional JSON arrays; its window array is the form
#: closed windows are held in memory (`WindowAcc.pack`).
POSITIONAL_VERSION: Final = 2
_ZERO_KEY: Final = sketch.ZERO_KEY
_MIN_INDEXABLE: Final = sketch.MIN_INDEXABLE
_MULT: Final = sketch.MULTIPLIER
_log, _ceil = math.log, math.ceil
_Q_NAMES: Final = tuple(sketch.QUANTILES)
_QS: Final = tuple(sketch.QUANTILES.values())
#: Changelog keys of kept closed 5 s windows start with this (server keys are UUIDs).
WINDOW_KEY_PREFIX: Final = b"w|"


def _dumps(value: object) -> bytes:
    """`value` as JSON, copied to its own size: orjson's result keeps an allocation of many
    KiB behind a short value, tens of times what a kept window or a changelog record needs
    while it waits in memory (kept, or until the next checkpoint sends it)."""
    return bytes(memoryview(orjson.dumps(value)))


@functools.lru_cache(maxsize=1 << 14)
def iso(ts: float) -> str:
    """A UTC timestamp as the message models write it ("...Z"). Cached: the windows of every
    server share their bounds, and most last samples fall on whole seconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class MetricAcc:
    total: float
    lo: float
    hi: float
    last: float
    #: The samples' quantile sketch (bucket → count, `schemas.sketch`); None once a part of
    #: the window was restored from a record without one (its quantiles are then unknown).
    sketch: dict[int, int] | None = None

    @classmethod
    def of(cls, v: float, sketched: bool = True) -> MetricAcc:
        if not sketched:
            return cls(v, v, v, v)
        k = _ZERO_KEY if v < _MIN_INDEXABLE else _ceil(_log(v) * _MULT)
        return cls(v, v, v, v, {k: 1})

    def add(self, v: float, is_latest: bool) -> None:
        self.total += v
        if v < self.lo:
            self.lo = v
        if v > self.hi:
            self.hi = v
        if is_latest:
            self.last = v
        sk = self.sketch
        if sk is not None:  # `sketch.add`, inline: this runs for every sample
            k = _ZERO_KEY if v < _MIN_INDEXABLE else _ceil(_log(v) * _MULT)
            sk[k] = sk.get(k, 0) + 1

    def merge(self, other: MetricAcc, other_is_latest: bool) -> None:
        self.total += other.total
        self.lo = min(self.lo, other.lo)
        self.hi = max(self.hi, other.hi)
        if other_is_latest:
            self.last = other.last
        if self.sketch is not None:
            if other.sketch is None:
                self.sketch = None
            else:
                sketch.merge(self.sketch, other.sketch)

    def copy(self) -> MetricAcc:
        sk = None if self.sketch is None else dict(self.sketch)
        return MetricAcc(self.total, self.lo, self.hi, self.last, sk)

    def as_row(self) -> tuple[float, float, float, float]:
        return self.total, self.lo, self.hi, self.last

    def sketch_row(self) -> list[int] | None:
        """The sketch as a flat array, key, count, key, count… (None: unknown)."""
        if self.sketch is None:
            return None
        return [x for kc in self.sketch.items() for x in kc]

    @staticmethod
    def sketch_of_row(row: list[int] | None) -> dict[int, int] | None:
        if row is None:
            return None
        return dict(zip(row[::2], row[1::2], strict=True))

    def record(self, with_sketch: bool = True) -> dict[str, Any]:
        r: dict[str, Any] = {"sum": self.total, "min": self.lo, "max": self.hi, "last": self.last}
        if with_sketch and self.sketch is not None:
            r["sketch"] = self.sketch_row()
        return r

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> MetricAcc:
        # A record of version 4 or before has no sketch: unknown, not empty.
        return cls(
            float(r["sum"]),
            float(r["min"]),
            float(r["max"]),
            float(r["last"]),
            cls.sketch_of_row(r.get("sketch")),
        )

    def stats_json(self, count: int, with_last: bool) -> dict[str, Any]:
        """`stats()` as the JSON object, without building the model. A rollup's (no `last`)
        has the quantiles and the sketch, when its sketch is known."""
        # Clamp: a mean of values in 0..100 can leave the range by a rounding error.
        avg = min(100.0, max(0.0, self.total / count))
        out: dict[str, Any] = {
            "avg": avg,
            "min": self.lo,
            "max": self.hi,
            "last": self.last if with_last else None,
        }
        if not with_last and self.sketch is not None:
            qs = sketch.quantiles(self.sketch, _QS, self.lo, self.hi)
            out.update(zip(_Q_NAMES, qs, strict=True))
            keys, counts = sketch.to_arrays(self.sketch)
            out["sketch"] = {"keys": keys, "counts": counts}
        return out

    def stats(self, count: int, with_last: bool) -> MetricStats:
        return MetricStats.model_validate(self.stats_json(count, with_last))


@dataclass(slots=True)
class WindowAcc:
    """One window of one server: open, or closed and kept for corrections."""

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
    #: The latest sample's process list (5 s windows only; None for rollups).
    processes: list[ProcessInfo] | None
    #: Lowest offset of a sample in it, while open: a restart must replay from there.
    first_offset: int | None = None
    #: Highest offset of a sample in it: a replayed sample at or below it is already in.
    last_offset: int = -1
    #: Revision last emitted: -1 before the first emission, then 0, 1, ... per correction.
    revision: int = -1
    #: 5 s windows only, the timestamps of the samples in it: bit i set for one at whole
    #: second `start + i` (the usual case, a few integer operations per sample), ...
    seen: int = 0
    #: ... and the exact timestamps of the others (None while there are none).
    seen_exact: list[float] | None = None
    #: Offsets of the samples it took after it had closed (corrections) that its server's
    #: `covered` did not account for yet when it was last kept. A replay after a checkpoint
    #: cut short finds such a window newer than its server's record: a replayed record at or
    #: below `last_offset` whose timestamp it holds is then the correction itself only if
    #: its offset is here (its rollups still need it), else a duplicate.
    late_offsets: list[int] | None = None

    @classmethod
    def from_event(
        cls,
        e: RawMetricEvent,
        start: int,
        size: int,
        offset: int,
        *,
        rollup: bool = False,
        sketched: bool = True,
    ) -> WindowAcc:
        acc = cls(
            server_id=e.server_id,
            start=start,
            size=size,
            count=1,
            cpu=MetricAcc.of(e.cpu_usage, sketched),
            mem=MetricAcc.of(e.memory_usage, sketched),
            disk=MetricAcc.of(e.disk_usage, sketched),
            rx=e.network_rx,
            tx=e.network_tx,
            last_ts=e.timestamp.timestamp(),
            processes=None if rollup else list(e.processes),
            first_offset=offset,
            last_offset=offset,
        )
        if not rollup:
            acc.mark(acc.last_ts)
        return acc

    @classmethod
    def seeded_by(cls, w: WindowAcc, start: int, size: int) -> WindowAcc:
        """A rollup whose first content is the closed 5 s window `w`."""
        return cls(
            server_id=w.server_id,
            start=start,
            size=size,
            count=w.count,
            cpu=w.cpu.copy(),
            mem=w.mem.copy(),
            disk=w.disk.copy(),
            rx=w.rx,
            tx=w.tx,
            last_ts=w.last_ts,
            processes=None,
        )

    @property
    def end(self) -> int:
        return self.start + self.size

    def holds(self, ts: float) -> bool:
        """Whether a sample at `ts` (in this 5 s window) is in it already."""
        whole = int(ts)
        if whole == ts:
            return bool(self.seen >> (whole - self.start) & 1)
        return self.seen_exact is not None and ts in self.seen_exact

    def mark(self, ts: float) -> None:
        """Note a sample at `ts` (in this 5 s window) as in it."""
        whole = int(ts)
        if whole == ts:
            self.seen |= 1 << (whole - self.start)
        elif self.seen_exact is None:
            self.seen_exact = [ts]
        else:
            self.seen_exact.append(ts)

    def add(self, e: RawMetricEvent, offset: int, ts: float) -> None:
        """Add the sample `e` at `ts` (its timestamp, as epoch seconds) to the statistics
        (not to `seen`: rollups have none, and the caller has checked it already)."""
        latest = ts >= self.last_ts
        self.count += 1
        self.cpu.add(e.cpu_usage, latest)
        self.mem.add(e.memory_usage, latest)
        self.disk.add(e.disk_usage, latest)
        self.rx += e.network_rx
        self.tx += e.network_tx
        if latest:
            self.last_ts = ts
            if self.processes is not None:
                self.processes = list(e.processes)
        if self.first_offset is None or offset < self.first_offset:
            self.first_offset = offset
        if offset > self.last_offset:
            self.last_offset = offset

    def absorb(self, w: WindowAcc) -> None:
        """Merge a closed 5 s window into this hourly/daily one."""
        latest = w.last_ts >= self.last_ts
        self.count += w.count
        self.cpu.merge(w.cpu, latest)
        self.mem.merge(w.mem, latest)
        self.disk.merge(w.disk, latest)
        self.rx += w.rx
        self.tx += w.tx
        if latest:
            self.last_ts = w.last_ts

    def to_aggregate(self, resolution: Resolution, emitted_at: datetime) -> WindowAggregate:
        """The window as a validated message (the reference `to_json_bytes` is tested
        against)."""
        five = resolution is BASE
        return WindowAggregate(
            server_id=self.server_id,
            resolution=resolution,
            window_start=datetime.fromtimestamp(self.start, UTC),
            window_end=datetime.fromtimestamp(self.end, UTC),
            revision=max(0, self.revision),
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
        """The window as `WindowAggregate` JSON, written directly: building the pydantic
        model costs more than the whole windowing of its events."""
        five = resolution is BASE
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
            "window_start": iso(self.start),
            "window_end": iso(self.start + self.size),
            "revision": max(0, self.revision),
            "count": n,
            "cpu_usage": self.cpu.stats_json(n, five),
            "memory_usage": self.mem.stats_json(n, five),
            "disk_usage": self.disk.stats_json(n, five),
            "network_rx": self.rx,
            "network_tx": self.tx,
            "processes": processes,
            "last_event_at": iso(self.last_ts),
            "emitted_at": emitted_at,
        }
        return orjson.dumps(doc)

    def pack(self) -> bytes:
        """The window as it is kept in memory once closed: a compact positional array (the
        version-2 changelog value, with the seen timestamps after it), never written to the
        changelog any more. Without the sketches (see `record`)."""
        return _dumps(self.row())

    def row(self) -> list[Any]:
        """The window's state as a positional array (see `unpack`)."""
        procs = None
        if self.processes is not None:
            procs = [[p.pid, p.name, p.cpu_usage, p.memory_usage] for p in self.processes]
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
            self.revision,
            self.last_offset,
            procs,
            self.seen,
            self.seen_exact,
            self.late_offsets,
        ]

    @classmethod
    def unpack(cls, server_id: str, data: bytes | list[Any]) -> WindowAcc:
        """A kept window from memory: its positional array (`pack`, or a version-2 record),
        or a changelog record restored as it was read (see `PartitionWindows.restore`)."""
        if isinstance(data, bytes) and data[:1] == b"{":
            return cls.from_record(server_id, orjson.loads(data))
        row = orjson.loads(data) if isinstance(data, bytes) else data
        procs = row[20]
        # A version-2 record ends at the processes: it restores with nothing seen, so a
        # duplicate of a sample it holds is taken as a correction. That is the best that can
        # be done; the record did not say which timestamps it held.
        seen = row[21:24] if len(row) > 21 else (0, None, None)
        return cls(
            server_id=server_id,
            start=int(row[0]),
            size=int(row[1]),
            count=int(row[2]),
            cpu=MetricAcc(*row[3:7]),
            mem=MetricAcc(*row[7:11]),
            disk=MetricAcc(*row[11:15]),
            rx=int(row[15]),
            tx=int(row[16]),
            last_ts=float(row[17]),
            revision=int(row[18]),
            last_offset=int(row[19]),
            processes=None
            if procs is None
            else [
                ProcessInfo.model_construct(pid=p[0], name=p[1], cpu_usage=p[2], memory_usage=p[3])
                for p in procs
            ],
            seen=int(seen[0]),
            seen_exact=seen[1],
            late_offsets=seen[2],
        )

    def record(self) -> dict[str, Any]:
        """The window's state with named fields, for the changelog (`first_offset` is not in
        it: only open 5 s windows have one, and a restart rebuilds those by replaying). A
        rollup's has its sketches; a closed 5 s window's none: its samples' sketch went into
        its rollups as it closed, and a correction reaches them directly."""
        rollup = self.size != SIZE
        procs = None
        if self.processes is not None:
            # By column: the names once, not once per process.
            ps = self.processes
            procs = {
                "pid": [p.pid for p in ps],
                "name": [p.name for p in ps],
                "cpu_usage": [p.cpu_usage for p in ps],
                "memory_usage": [p.memory_usage for p in ps],
            }
        return {
            "start": self.start,
            "size": self.size,
            "count": self.count,
            "cpu_usage": self.cpu.record(rollup),
            "memory_usage": self.mem.record(rollup),
            "disk_usage": self.disk.record(rollup),
            "network_rx": self.rx,
            "network_tx": self.tx,
            "last_event_at": self.last_ts,
            "revision": self.revision,
            "last_offset": self.last_offset,
            "processes": procs,
            **self._seen_record(),
        }

    def _seen_record(self) -> dict[str, Any]:
        """The seen timestamps as named fields, only those that hold something (a rollup has
        none, and its server record is written about once per 5 s window)."""
        r: dict[str, Any] = {}
        if self.seen:
            r["seen"] = self.seen
        if self.seen_exact:
            r["seen_exact"] = self.seen_exact
        if self.late_offsets:
            r["late_offsets"] = self.late_offsets
        return r

    @classmethod
    def from_record(cls, server_id: str, r: dict[str, Any]) -> WindowAcc:
        """The window of a `record()`."""
        procs = r["processes"]
        return cls(
            server_id=server_id,
            start=int(r["start"]),
            size=int(r["size"]),
            count=int(r["count"]),
            cpu=MetricAcc.from_record(r["cpu_usage"]),
            mem=MetricAcc.from_record(r["memory_usage"]),
            disk=MetricAcc.from_record(r["disk_usage"]),
            rx=int(r["network_rx"]),
            tx=int(r["network_tx"]),
            last_ts=float(r["last_event_at"]),
            revision=int(r["revision"]),
            last_offset=int(r["last_offset"]),
            processes=None
            if procs is None
            else [
                ProcessInfo.model_construct(pid=pid, name=name, cpu_usage=cpu, memory_usage=mem)
                for pid, name, cpu, mem in zip(
                    procs["pid"],
                    procs["name"],
                    procs["cpu_usage"],
                    procs["memory_usage"],
                    strict=True,
                )
            ],
            # A version-3 record has none of these: it restores with nothing seen, so a
            # duplicate of a sample it holds is taken as a correction. That is the best that
            # can be done; the record did not say which timestamps it held.
            seen=int(r.get("seen", 0)),
            seen_exact=r.get("seen_exact"),
            late_offsets=r.get("late_offsets"),
        )

    def changelog_value(self) -> bytes:
        """The window as its kept-window changelog record (version first, see `_RECORD_HEADS`)."""
        return _dumps({"v": STATE_VERSION, **self.record()})


#: How every record this worker writes begins (and the previous named version's did): a kept
#: window restored with it is held as read.
_RECORD_HEADS: Final = tuple(b'{"v":%d,' % v for v in NAMED_VERSIONS)


class ChangelogRecordError(FleetPulseError):
    """A changelog record this worker cannot read: a version it does not know (written by a
    newer release, or not by FleetPulse), or fields missing. Restoring stops at it rather than
    guess; the message names the record's key."""

    def __init__(self, key: bytes, problem: str) -> None:
        super().__init__(f"changelog record {key!r}: {problem}")
        self.key = key


def _version_of(value: bytes) -> object:
    """The version a record says it has (None if it says none or cannot be parsed)."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return data.get("v") if isinstance(data, dict) else None


def _unreadable(key: bytes, version: object) -> ChangelogRecordError:
    readable = f"{POSITIONAL_VERSION} to {STATE_VERSION}"
    return ChangelogRecordError(
        key, f"version {version!r}, but this worker reads versions {readable} only"
    )


@dataclass(frozen=True)
class Grace:
    """Seconds a window waits past its end for out-of-order samples, by resolution name; a
    resolution not named waits its default in the resolutions table."""

    by_resolution: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values = per_resolution(lambda r: r.grace, self.by_resolution)
        object.__setattr__(self, "by_resolution", values)
        # A cascaded window must outlive the last of its first-resolution windows, which
        # feeds it on closing.
        short = [name for name, g in values.items() if g < values[BASE]]
        if short:
            raise ValueError(
                f"the grace of {', '.join(short)} must be at least the {BASE} grace "
                f"({values[BASE]:g} s)"
            )

    @property
    def base(self) -> float:
        """The grace of the first resolution's windows (those windowed from the samples)."""
        return self.by_resolution[BASE]

    def of(self, resolution: Resolution) -> float:
        return self.by_resolution[resolution]


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A window emitted (first time, or again as a correction), on its way to its topic.
    Its JSON is written when it is emitted: a later correction changes the window, not this."""

    server_id: str
    resolution: Resolution
    revision: int
    value: bytes

    def to_json_bytes(self) -> bytes:
        return self.value

    def message(self) -> WindowAggregate:
        """The aggregate as a validated message (what a consumer of the topic reads)."""
        return WindowAggregate.model_validate_json(self.value)


#: A rollup window: (resolution, start).
RollupKey = tuple[Resolution, int]


@dataclass(slots=True)
class Late:
    """Why a sample was refused."""

    detail: str


#: What `PartitionWindows._late` says of a duplicate (dropped, not refused: no dead letter).
_DUPLICATE: Final = Late("a duplicate")


@dataclass(slots=True)
class ServerWindows:
    """One server's windows and clocks in one partition."""

    server_id: str
    #: Latest sample timestamp seen (event time).
    event_time: float = -math.inf
    #: Windows whose end plus grace is at or before this are closed (event time, or event
    #: time carried forward by the wall clock while the server is quiet).
    closed_time: float = -math.inf
    #: Wall clock at the server's latest sample.
    arrived: float = -math.inf
    #: Offsets below this are accounted for by the restored state (replay guard).
    covered: int = 0
    #: Closed 5 s windows released early (the server quiet for longer than the horizon):
    #: every one starting before this.
    released: int = -(2**62)
    five: dict[int, WindowAcc] = field(default_factory=dict)  # open 5 s windows
    kept: dict[int, bytes] = field(default_factory=dict)  # closed 5 s windows, packed
    rollups: dict[RollupKey, WindowAcc] = field(default_factory=dict)  # open or emitted
    #: No window of the server closes before event time reaches this (end plus grace of its
    #: earliest open window): a sample below it closes nothing. Not state: -inf (unknown)
    #: after a restore, recomputed by every `_close`; never above the true value.
    next_due: float = -math.inf

    def changelog_value(self) -> bytes:
        """The server's record: its clocks and its open and emitted rollups, named."""
        rollups = []
        for (resolution, _), acc in self.rollups.items():
            r = acc.record()
            r["resolution"] = resolution
            rollups.append(r)
        return _dumps(
            {
                "v": STATE_VERSION,
                "event_time": self.event_time,
                "closed_time": self.closed_time,
                "covered": self.covered,
                "released": self.released,
                "rollups": rollups,
            }
        )

    @classmethod
    def from_changelog(cls, key: bytes, value: bytes) -> ServerWindows:
        """The server of a record (version 5, 4 or 3, or 2: rollups as positional arrays). Raises
        `ChangelogRecordError` for any other version, or a record it cannot read."""
        server_id = key.decode()
        try:
            data = orjson.loads(value)
            version = data.get("v")
            if version not in NAMED_VERSIONS and version != POSITIONAL_VERSION:
                raise _unreadable(key, version)
            state = cls(
                server_id,
                event_time=float(data["event_time"]),
                closed_time=float(data["closed_time"]),
                covered=int(data["covered"]),
                released=int(data["released"]),
            )
            for r in data["rollups"]:
                if version in NAMED_VERSIONS:
                    resolution, acc = r["resolution"], WindowAcc.from_record(server_id, r)
                else:
                    resolution, acc = r[0], WindowAcc.unpack(server_id, r[1])
                state.rollups[(Resolution(resolution), acc.start)] = acc
        except ChangelogRecordError:
            raise
        except (orjson.JSONDecodeError, LookupError, TypeError, ValueError, AttributeError) as exc:
            raise ChangelogRecordError(key, f"not a readable server record ({exc!r})") from None
        return state


def window_key(server_id: str, start: int) -> bytes:
    return b"%s%s|%d" % (WINDOW_KEY_PREFIX, server_id.encode(), start)


def parse_window_key(key: bytes) -> tuple[str, int]:
    server, _, start = key[len(WINDOW_KEY_PREFIX) :].partition(b"|")
    return server.decode(), int(start)


@dataclass
class PartitionWindows:
    """The windows of one input partition, one `ServerWindows` per server."""

    grace: Grace = field(default_factory=Grace)
    #: How far behind its server's event time a late sample is still absorbed, s.
    horizon: float = 3600.0
    #: Seconds of silence after which a server's windows close by the wall clock itself.
    offline_after: float = 15.0
    #: Keep each metric's quantile sketch (for the rollups' percentiles).
    sketches: bool = True
    servers: dict[str, ServerWindows] = field(default_factory=dict)
    late_absorbed: int = 0
    late_dropped: int = 0
    #: Samples dropped as duplicates (a replayed record already counted is not counted again).
    duplicates: int = 0
    #: Servers whose record changed since the last checkpoint.
    _dirty: set[str] = field(default_factory=set)
    #: Kept-window records to write at the next checkpoint (None: a tombstone).
    _dirty_windows: dict[bytes, bytes | None] = field(default_factory=dict)

    def add(
        self, e: RawMetricEvent, offset: int, wall: float, stamp: str, out: list[ClosedWindow]
    ) -> Late | None:
        """Take one sample; what it closes or corrects is appended to `out` (emitted at
        `stamp`). A `Late` if it is refused (counted, unless it is a replay). A duplicate (its
        window has a sample at its timestamp) is dropped: counted, nothing else changes."""
        s = self.servers.get(e.server_id)
        if s is None:
            s = self.servers[e.server_id] = ServerWindows(e.server_id)
        ts = e.timestamp.timestamp()
        start = int(ts // SIZE) * SIZE
        replayed = offset < s.covered
        acc = s.five.get(start)
        if acc is not None:
            # `holds` and `mark` inline for a whole second: this runs for every sample.
            whole = int(ts)
            if whole == ts:
                bit = 1 << (whole - start)
                if acc.seen & bit:
                    self._duplicate(replayed)
                    return None
                acc.seen |= bit
            elif acc.holds(ts):
                self._duplicate(replayed)
                return None
            else:
                acc.mark(ts)
            acc.add(e, offset, ts)
        elif (
            start in s.kept or start < s.released or start + SIZE + self.grace.base <= s.event_time
        ):
            # Its window has closed (or, never opened, is behind the server's own event
            # time): late. A replayed one is in the restored state already.
            if not replayed:
                # Recorded even if refused (or a duplicate): a replay must know this offset
                # is accounted for.
                self._dirty.add(s.server_id)
                late = self._late(s, e, ts, start, offset, stamp, out)
                if late is _DUPLICATE:
                    return None
                if late is not None:
                    return late
        else:
            # A slot the wall clock passed while the server was quiet is not closed for a
            # sample newer than any it sent: an agent's outage buffer lands in open windows.
            s.five[start] = WindowAcc.from_event(e, start, SIZE, offset, sketched=self.sketches)
            due = start + SIZE + self.grace.base
            if due < s.next_due:
                s.next_due = due
        if not replayed:
            s.arrived = wall
        if ts > s.event_time:
            s.event_time = ts
            if ts >= s.next_due:
                self._close(s, ts, stamp, out)
            elif ts > s.closed_time:  # (all `_close` would have done)
                s.closed_time = ts
        return None

    def _duplicate(self, replayed: bool) -> None:
        if not replayed:  # (else it was counted before the restart)
            self.duplicates += 1

    def _late(
        self,
        s: ServerWindows,
        e: RawMetricEvent,
        ts: float,
        start: int,
        offset: int,
        stamp: str,
        out: list[ClosedWindow],
    ) -> Late | None:
        """A sample for a closed 5 s window: absorb it as a correction, or refuse it, or
        drop it as a duplicate (`_DUPLICATE`) if the kept window has its timestamp."""
        if ts < s.event_time - self.horizon:
            self.late_dropped += 1
            return Late(
                f"event at {e.timestamp.isoformat()} is {s.event_time - ts:.0f} s behind its "
                f"server's event time ({datetime.fromtimestamp(s.event_time, UTC).isoformat()}), "
                f"beyond the {self.horizon:g} s lateness horizon"
            )
        if start < s.released:
            self.late_dropped += 1
            return Late(
                f"event at {e.timestamp.isoformat()} is for a window closed and released after "
                f"its server was quiet for longer than the {self.horizon:g} s lateness horizon"
            )
        packed = s.kept.get(start)
        w = None if packed is None else WindowAcc.unpack(s.server_id, packed)
        if w is None:  # nothing was in this window: it is emitted now, then complete
            w = WindowAcc.from_event(e, start, SIZE, offset, sketched=self.sketches)
            self._emit(w, BASE, stamp, out)
        elif w.holds(ts):
            if not (w.late_offsets and offset in w.late_offsets):
                self.duplicates += 1
                return _DUPLICATE
            # Replayed after a checkpoint cut short: the window's record, newer than its
            # server's, holds this very correction; only the rollups below need it again.
        elif offset > w.last_offset:
            w.add(e, offset, ts)
            w.mark(ts)
            self._emit(w, BASE, stamp, out)
        else:
            # At or below: a newer record of it has it already, one of a version that did
            # not say which timestamps it held. Say it now.
            w.mark(ts)
        self.late_absorbed += 1
        if w.late_offsets is None:
            w.late_offsets = [offset]
        elif offset not in w.late_offsets:
            w.late_offsets.append(offset)
        w.first_offset = None
        self._keep(s, w)
        for resolution, size in ROLLUPS:
            key = (resolution, int(ts // size) * size)
            r = s.rollups.get(key)
            if r is None:
                r = s.rollups[key] = WindowAcc.from_event(
                    e, key[1], size, offset, rollup=True, sketched=self.sketches
                )
                s.next_due = -math.inf  # (rare: the next sample recomputes it)
            else:
                r.add(e, offset, ts)
            if r.revision >= 0 or r.end + self.grace.of(resolution) <= s.event_time:
                self._emit(r, resolution, stamp, out)
        return None

    def _close(self, s: ServerWindows, t: float, stamp: str, out: list[ClosedWindow]) -> None:
        """Close `s`'s open windows that `t` passes (end plus grace): emit, cascade, release."""
        if t > s.closed_time:
            s.closed_time = t
        g5 = self.grace.base
        due = [start for start in s.five if start + SIZE + g5 <= t]
        if due:
            self._dirty.add(s.server_id)
            for start in sorted(due):
                w = s.five.pop(start)
                self._emit(w, BASE, stamp, out)
                w.first_offset = None
                self._keep(s, w)
                for resolution, size in ROLLUPS:
                    key = (resolution, start // size * size)
                    r = s.rollups.get(key)
                    if r is None:
                        s.rollups[key] = WindowAcc.seeded_by(w, key[1], size)
                    else:
                        r.absorb(w)
                        # Emitted already: the wall clock closed it while its server was
                        # quiet (an hour that had ended), and the server has resumed.
                        if r.revision >= 0:
                            self._emit(r, resolution, stamp, out)
            self._release(s)  # what falls behind the horizon moves with closing windows
        next_due = math.inf
        for (resolution, _), r in s.rollups.items():
            if r.revision < 0:
                end = r.end + self.grace.of(resolution)
                if end <= t:
                    self._emit(r, resolution, stamp, out)
                elif end < next_due:
                    next_due = end
        for start in s.five:
            if start + SIZE + g5 < next_due:
                next_due = start + SIZE + g5
        s.next_due = next_due

    def _emit(
        self, w: WindowAcc, resolution: Resolution, stamp: str, out: list[ClosedWindow]
    ) -> None:
        w.revision += 1
        out.append(
            ClosedWindow(w.server_id, resolution, w.revision, w.to_json_bytes(resolution, stamp))
        )
        self._dirty.add(w.server_id)

    def _keep(self, s: ServerWindows, w: WindowAcc) -> None:
        if w.late_offsets:
            # A record below `covered` is never offered to it again (a replay skips it).
            w.late_offsets = [o for o in w.late_offsets if o >= s.covered] or None
        # Held compact (positional: this process writes and reads it), recorded named.
        s.kept[w.start] = w.pack()
        self._dirty_windows[window_key(s.server_id, w.start)] = w.changelog_value()

    def _release(self, s: ServerWindows) -> None:
        """Forget what has fallen behind the horizon: kept 5 s windows (oldest first; one
        kept out of order waits its turn), rollups emitted and now final."""
        edge = s.event_time - self.horizon
        kept = s.kept
        while kept:
            start = next(iter(kept))
            if start + SIZE > edge:
                break
            del kept[start]
            self._dirty_windows[window_key(s.server_id, start)] = None
        final = [k for k, r in s.rollups.items() if r.revision >= 0 and r.end <= edge]
        for k in final:
            del s.rollups[k]

    def idle(self, wall: float, stamp: str, out: list[ClosedWindow]) -> None:
        """The partition has nothing fetched and unprocessed: every server's event time is
        carried forward by the wall-clock time since its latest sample, which closes the
        windows of servers that went quiet (a host behind the clock that keeps sending is
        never closed early). A server silent for `offline_after` has its windows closed by
        the wall clock itself (a backfill of old samples gets its hours and days). One quiet
        for longer than the horizon has its kept 5 s windows released (its hourly and daily
        state stays)."""
        for s in self.servers.values():
            quiet = wall - s.arrived
            if quiet <= 0:
                continue
            t = s.event_time + quiet
            if quiet >= self.offline_after and wall > t:
                t = wall
            if t > s.closed_time:
                self._close(s, t, stamp, out)
            if quiet > self.horizon and s.kept:
                s.released = max(s.kept) + SIZE
                for start in s.kept:
                    self._dirty_windows[window_key(s.server_id, start)] = None
                s.kept.clear()
                self._dirty.add(s.server_id)

    def checkpoint(self, covered: int) -> Iterator[tuple[bytes, bytes | None]]:
        """Changelog records of everything changed since the last checkpoint, in the order
        that keeps any prefix of them consistent (a crash may cut a checkpoint short):
        1. kept windows written or corrected: a server record durable means its windows are;
        2. server records, each accounting for the offsets below `covered`;
        3. tombstones of released windows, last: a window is gone only once the server
           record that released it (its later event time) is durable. Before it, a late
           sample restored against the older record would find its window missing and
           emit a window holding only itself."""
        windows, self._dirty_windows = self._dirty_windows, {}
        released = []
        for key, value in windows.items():
            if value is None:
                released.append(key)
            else:
                yield key, value
        dirty, self._dirty = self._dirty, set()
        for server_id in dirty:
            s = self.servers[server_id]
            s.covered = max(s.covered, covered)
            yield server_id.encode(), s.changelog_value()
        for key in released:
            yield key, None

    def restore(self, records: dict[bytes, bytes], wall: float) -> None:
        """Start from the changelog (latest value per key, tombstones removed) at `wall`:
        a restored server is quiet from then on, not since its last sample. Records of
        versions 2 to 5 are read; any other raises `ChangelogRecordError` with its key, and
        nothing of the partition is restored (a server record written before an unreadable
        window record would otherwise miss it)."""
        windows: list[tuple[str, int, bytes]] = []
        servers: dict[str, ServerWindows] = {}
        for key, value in records.items():
            if key.startswith(WINDOW_KEY_PREFIX):
                # Held as read, unparsed: a takeover reads thousands per server. Only the
                # version is checked here; `WindowAcc.unpack` reads either form by its shape.
                if not (value.startswith(_RECORD_HEADS) or value[:1] == b"["):
                    raise _unreadable(key, _version_of(value))
                server_id, start = parse_window_key(key)
                windows.append((server_id, start, value))
            else:
                s = ServerWindows.from_changelog(key, value)
                s.arrived = wall
                servers[s.server_id] = s
        self.servers.update(servers)
        g5 = self.grace.base
        for server_id, start, value in sorted(windows, key=lambda w: w[1]):
            owner = self.servers.get(server_id)
            # A window closed after its server's record was written is rebuilt by the replay.
            closed = owner is not None and start + SIZE + g5 <= owner.closed_time
            if owner is not None and closed and start >= owner.released:
                owner.kept[start] = value

    def restore_v1(
        self, records: dict[bytes, bytes], watermark: float, covered: int, wall: float
    ) -> None:
        """Start from a changelog of the previous release: one event time per partition
        (`watermark`), open rollups per server, markers of emitted ones. The 5 s windows it
        had closed are released (their content was not kept), so a late sample for one is
        refused rather than turned into a window that holds only itself."""
        released = int(watermark // SIZE) * SIZE + SIZE
        for key, value in records.items():
            server_id = key.decode()
            data = orjson.loads(value)
            s = self.servers[server_id] = ServerWindows(
                server_id,
                event_time=watermark,
                closed_time=watermark,
                arrived=wall,
                covered=covered,
                released=released,
            )
            for res, *row in data.get("rollups", []):
                start, size, count = int(row[0]), int(row[1]), int(row[2])
                cpu, mem, disk = (MetricAcc(*row[i : i + 4]) for i in (3, 7, 11))
                s.rollups[(Resolution(res), start)] = WindowAcc(
                    server_id,
                    start,
                    size,
                    count,
                    cpu,
                    mem,
                    disk,
                    rx=int(row[15]),
                    tx=int(row[16]),
                    last_ts=float(row[17]),
                    processes=None,
                )

    def committable_offset(self, next_offset: int) -> int:
        """The offset from which a restart must replay to rebuild the open 5 s windows."""
        low = next_offset
        for s in self.servers.values():
            for w in s.five.values():
                if w.first_offset is not None and w.first_offset < low:
                    low = w.first_offset
        return low

    def open_windows(self) -> int:
        return sum(len(s.five) for s in self.servers.values())

    def kept_windows(self) -> int:
        return sum(len(s.kept) for s in self.servers.values())
