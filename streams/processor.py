"""What the stream worker does with each raw record, as pure logic over (record, clock).

`StreamProcessor` turns raw records into outputs — windows for the aggregate topics (closed,
or corrected by a late sample), dead letters for `metrics.dlq.v1`, status changes for
`metrics.status.v1` — and says up to which offset each partition may be committed (the oldest
record still needed by an open 5 s window: a restart replays from there). Everything else a
restart needs (each server's clocks, its hourly and daily windows, its closed 5 s windows kept
for corrections) is checkpointed instead (`checkpoint()` / `restore()`, see
`streams/windows.py`); a record replayed from before the checkpoint is not dead-lettered or
counted again. The Kafka wiring (`fleetpulse stream`) only moves records in and outputs out,
and tells `idle()` and `tick()` which partitions have nothing fetched and unprocessed, so
everything here is tested without a broker.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, NamedTuple, Protocol

import orjson

from schemas import (
    DeadLetter,
    DeadLetterReason,
    InvalidMessage,
    RawMetricEvent,
    ServerState,
    ServerStatusChange,
    decode_raw_event,
)
from streams.windows import (
    NAMED_VERSIONS,
    POSITIONAL_VERSION,
    STATE_VERSION,
    ChangelogRecordError,
    ClosedWindow,
    Grace,
    PartitionWindows,
    iso,
)

COMPONENT = "stream"
#: Changelog key of a partition's progress record (server keys are UUIDs, never this).
PROGRESS_KEY: Final = b"progress"


class RecordLike(Protocol):
    """What the processor reads of a raw record (an aiokafka `ConsumerRecord` is one)."""

    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes: ...


class Record(NamedTuple):
    offset: int
    key: bytes | None
    value: bytes


@dataclass
class Outputs:
    aggregates: list[ClosedWindow] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    statuses: list[ServerStatusChange] = field(default_factory=list)

    def extend(self, other: Outputs) -> None:
        self.aggregates += other.aggregates
        self.dead_letters += other.dead_letters
        self.statuses += other.statuses


@dataclass
class _Seen:
    last_event_at: datetime
    last_wall: float
    online: bool
    partition: int


class StatusTracker:
    """Online on a server's first event (and after it was offline); offline after `timeout`
    seconds of wall-clock silence, with the time of its last event. Silence counts only on a
    partition that has nothing fetched and unprocessed: a server whose events sit in a
    backlog is not silent."""

    def __init__(self, timeout: float = 15.0) -> None:
        self.timeout = timeout
        self._seen: dict[str, _Seen] = {}

    def saw(self, e: RawMetricEvent, wall: float, partition: int = 0) -> ServerStatusChange | None:
        s = self._seen.get(e.server_id)
        if s is None or not s.online:
            self._seen[e.server_id] = _Seen(e.timestamp, wall, True, partition)
            return ServerStatusChange(
                server_id=e.server_id,
                status=ServerState.ONLINE,
                last_event_at=e.timestamp,
                changed_at=datetime.fromtimestamp(wall, UTC),
            )
        s.last_wall = wall
        s.partition = partition
        if e.timestamp > s.last_event_at:
            s.last_event_at = e.timestamp
        return None

    def expire(
        self, wall: float, caught_up: Collection[int] | None = None
    ) -> list[ServerStatusChange]:
        """Servers silent for `timeout` go offline (only on `caught_up` partitions, if given)."""
        out = []
        for server_id, s in self._seen.items():
            if not s.online or wall - s.last_wall < self.timeout:
                continue
            if caught_up is not None and s.partition not in caught_up:
                continue
            s.online = False
            out.append(
                ServerStatusChange(
                    server_id=server_id,
                    status=ServerState.OFFLINE,
                    last_event_at=s.last_event_at,
                    changed_at=datetime.fromtimestamp(wall, UTC),
                )
            )
        return out

    def forget(self, partition: int) -> None:
        """The partition went to another worker, which says what its servers do now."""
        self._seen = {k: s for k, s in self._seen.items() if s.partition != partition}


class StreamProcessor:
    """The state of one worker: windows per input partition and the servers' status."""

    def __init__(
        self,
        *,
        source_topic: str,
        grace: Grace | None = None,
        offline_after: float = 15.0,
        lateness_horizon: float = 3600.0,
        sketches: bool = True,
    ) -> None:
        self.source_topic = source_topic
        self.sketches = sketches
        self.grace = grace or Grace()
        self.horizon = lateness_horizon
        self.partitions: dict[int, PartitionWindows] = {}
        #: Per partition: the offset after the last record processed.
        self.next_offsets: dict[int, int] = {}
        #: Per partition: records below this offset were processed before the restored
        #: checkpoint (their dead letters went out then).
        self.replay_until: dict[int, int] = {}
        #: Per partition: the offset the replay of the restored checkpoint starts from (what
        #: that checkpoint committed), when its progress record says so.
        self.replay_from: dict[int, int] = {}
        self.status = StatusTracker(offline_after)
        self._retired = {"late_absorbed": 0, "late_dropped": 0, "duplicates": 0}  # of revoked
        self._wall = 0.0
        self._stamp = iso(0.0)

    def _stamp_of(self, wall: float) -> str:
        if wall != self._wall:
            self._wall, self._stamp = wall, iso(wall)
        return self._stamp

    def _windows(self, partition: int) -> PartitionWindows:
        windows = self.partitions.get(partition)
        if windows is None:
            windows = self.partitions[partition] = PartitionWindows(
                self.grace, self.horizon, self.status.timeout, sketches=self.sketches
            )
        return windows

    def record(
        self,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        wall: float,
        out: Outputs | None = None,
    ) -> Outputs:
        """Take one raw record (see `records`); return `out` (a new `Outputs` if none)."""
        if out is None:
            out = Outputs()
        self.records(partition, (Record(offset, key, value),), wall, out)
        return out

    def records(
        self, partition: int, records: Sequence[RecordLike], wall: float, out: Outputs
    ) -> None:
        """Take `partition`'s records, in offset order, all at wall time `wall`; add the
        windows they close or correct, their dead letters and the status changes to `out`.
        One loop per partition: what every record of it shares is looked up once."""
        if not records:
            return
        windows = self._windows(partition)
        stamp = self._stamp_of(wall)
        replayed_below = self.replay_until.get(partition, 0)
        add, saw, aggregates = windows.add, self.status.saw, out.aggregates
        for r in records:
            offset = r.offset
            try:
                event = decode_raw_event(r.value)
            except InvalidMessage as exc:
                if offset >= replayed_below:  # else it went out before
                    out.dead_letters.append(
                        self._letter(exc.reason, exc.detail, partition, offset, r.key, r.value)
                    )
                continue
            late = add(event, offset, wall, stamp, aggregates)
            if late is not None:
                out.dead_letters.append(
                    self._letter(
                        DeadLetterReason.LATE, late.detail, partition, offset, r.key, r.value
                    )
                )
            change = saw(event, wall, partition)
            if change is not None:
                out.statuses.append(change)
        self.next_offsets[partition] = records[-1].offset + 1

    def idle(self, partition: int, wall: float) -> Outputs:
        """`partition` has nothing fetched and unprocessed: the wall clock carries its quiet
        servers' event time forward and closes their windows."""
        out = Outputs()
        windows = self.partitions.get(partition)
        if windows is not None:
            windows.idle(wall, self._stamp_of(wall), out.aggregates)
        return out

    def tick(self, wall: float, caught_up: Collection[int] | None = None) -> Outputs:
        """Periodic: servers silent for too long (on `caught_up` partitions) go offline."""
        return Outputs(statuses=self.status.expire(wall, caught_up))

    def committable(self, partition: int) -> int | None:
        """The offset to commit for `partition`: replaying from it rebuilds every open window."""
        nxt = self.next_offsets.get(partition)
        if nxt is None:
            return None
        windows = self.partitions.get(partition)
        return nxt if windows is None else windows.committable_offset(nxt)

    def counts(self) -> dict[str, int]:
        """Since the start: late samples absorbed as corrections, and dropped
        (dead-lettered); duplicates dropped (not dead-lettered)."""
        ws = self.partitions.values()
        return {
            "late_absorbed": self._retired["late_absorbed"] + sum(w.late_absorbed for w in ws),
            "late_dropped": self._retired["late_dropped"] + sum(w.late_dropped for w in ws),
            "duplicates": self._retired["duplicates"] + sum(w.duplicates for w in ws),
        }

    def revoke(self, partition: int) -> None:
        """The partition went to another worker, which restores its checkpoint and replays."""
        gone = self.partitions.pop(partition, None)
        if gone is not None:
            self._retired["late_absorbed"] += gone.late_absorbed
            self._retired["late_dropped"] += gone.late_dropped
            self._retired["duplicates"] += gone.duplicates
        self.next_offsets.pop(partition, None)
        self.replay_until.pop(partition, None)
        self.replay_from.pop(partition, None)
        self.status.forget(partition)

    def checkpoint(self, partition: int) -> list[tuple[bytes, bytes | None]]:
        """Changelog records for `partition`: what changed (kept windows, then servers; None
        is a tombstone), then the progress record, which names the offset to replay from
        with this state (`committable()`). Commit that offset once Kafka has them all."""
        windows = self.partitions.get(partition)
        nxt = self.next_offsets.get(partition)
        if windows is None or nxt is None:
            return []
        # Replaying after a restart does not take back what the restored checkpoint covered.
        covered = max(nxt, self.replay_until.get(partition, 0))
        replay_from = windows.committable_offset(nxt)
        records = list(windows.checkpoint(covered))
        # The offset goes with the state it belongs to: a restart that restores this state
        # replays from it without asking the group coordinator (which, just after a restart
        # of the whole cluster, can answer that nothing was ever committed).
        progress = {"v": STATE_VERSION, "next_offset": covered, "replay_from": replay_from}
        records.append((PROGRESS_KEY, orjson.dumps(progress)))
        return records

    def restore(self, partition: int, records: dict[bytes, bytes], wall: float) -> None:
        """Take over `partition` from its changelog (latest value per key, tombstones removed)
        at `wall`. Without a progress record the partition starts empty. `replay_from` says
        where the replay of what was restored starts, if the progress record names it (the
        previous releases' do not). A record of a version this worker does not read raises
        `ChangelogRecordError` naming its key."""
        self.revoke(partition)
        windows = self._windows(partition)
        raw_progress = records.get(PROGRESS_KEY)
        if raw_progress is None:
            return
        progress = orjson.loads(raw_progress)
        version = progress.get("v")
        v1 = version is None and "watermark" in progress  # the release before version 2
        if not (v1 or version in NAMED_VERSIONS or version == POSITIONAL_VERSION):
            raise ChangelogRecordError(
                PROGRESS_KEY,
                f"version {version!r}, but this worker reads versions 1 to {STATE_VERSION} only",
            )
        state = {k: v for k, v in records.items() if k != PROGRESS_KEY}
        covered = int(progress["next_offset"])
        if v1:
            windows.restore_v1(state, float(progress["watermark"]), covered, wall)
        else:
            windows.restore(state, wall)  # each record is read by its own version
        self.replay_until[partition] = covered
        if "replay_from" in progress:
            self.replay_from[partition] = int(progress["replay_from"])

    def _letter(
        self,
        reason: DeadLetterReason,
        detail: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
    ) -> DeadLetter:
        return DeadLetter.for_payload(
            value,
            reason=reason,
            error=detail,
            component=COMPONENT,
            source_topic=self.source_topic,
            source_partition=partition,
            source_offset=offset,
            key=key,
        )
