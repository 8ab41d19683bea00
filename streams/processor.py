"""What the stream worker does with each raw record, as pure logic over (record, clock).

`StreamProcessor` turns raw records into outputs — closed windows for the aggregate topics,
dead letters for `metrics.dlq.v1`, status changes for `metrics.status.v1` — and says up to
which offset each partition may be committed (the oldest record still needed by an open 5 s
window: a restart replays from there). Hourly and daily rollups are checkpointed instead
(`checkpoint()` / `restore()`); a record replayed from before the checkpoint whose 5 s window
the checkpoint had already closed is skipped, not dead-lettered again. The Kafka wiring
(`fleetpulse stream`) only moves records in and outputs out, so everything here is tested
without a broker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

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
from streams.windows import ClosedWindow, Grace, PartitionWindows, ServerRollups

COMPONENT = "stream"
#: Changelog key of a partition's progress record (server keys are UUIDs, never this).
PROGRESS_KEY: Final = b"progress"


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


class StatusTracker:
    """Online on a server's first event (and after it was offline); offline after `timeout`
    seconds of wall-clock silence, with the time of its last event."""

    def __init__(self, timeout: float = 15.0) -> None:
        self.timeout = timeout
        self._seen: dict[str, _Seen] = {}

    def saw(self, e: RawMetricEvent, wall: float) -> ServerStatusChange | None:
        s = self._seen.get(e.server_id)
        if s is None or not s.online:
            self._seen[e.server_id] = _Seen(e.timestamp, wall, True)
            return ServerStatusChange(
                server_id=e.server_id,
                status=ServerState.ONLINE,
                last_event_at=e.timestamp,
                changed_at=datetime.fromtimestamp(wall, UTC),
            )
        s.last_wall = wall
        if e.timestamp > s.last_event_at:
            s.last_event_at = e.timestamp
        return None

    def expire(self, wall: float) -> list[ServerStatusChange]:
        out = []
        for server_id, s in self._seen.items():
            if s.online and wall - s.last_wall >= self.timeout:
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


class StreamProcessor:
    """The state of one worker: windows per input partition and the servers' status."""

    def __init__(
        self, *, source_topic: str, grace: Grace | None = None, offline_after: float = 15.0
    ) -> None:
        self.source_topic = source_topic
        self.grace = grace or Grace()
        self.partitions: dict[int, PartitionWindows] = {}
        self.next_offsets: dict[int, int] = {}
        #: Per partition: records below this offset were processed before the restored
        #: checkpoint (replayed only to rebuild open 5 s windows).
        self.replay_until: dict[int, int] = {}
        #: Per partition: the watermark of the last checkpoint known to be stored.
        self.stored_watermark: dict[int, float] = {}
        self.status = StatusTracker(offline_after)

    def record(
        self,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        wall: float,
        out: Outputs | None = None,
    ) -> Outputs:
        """Take one raw record; add its dead letter or status change, if any, to `out` (a new
        `Outputs` if none) and return it. Windows it completes close at the next `close_due()`.
        """
        if out is None:
            out = Outputs()
        self.next_offsets[partition] = offset + 1
        windows = self.partitions.get(partition)
        if windows is None:
            windows = self.partitions[partition] = PartitionWindows(self.grace)
        replayed = offset < self.replay_until.get(partition, 0)
        try:
            event = decode_raw_event(value)
        except InvalidMessage as exc:
            if not replayed:  # its dead letter went out before the checkpoint
                out.dead_letters.append(
                    self._letter(exc.reason, exc.detail, partition, offset, key, value)
                )
            return out
        if not windows.add(event, offset, count_late=not replayed) and not replayed:
            detail = (
                f"event at {event.timestamp.isoformat()} is behind the partition's event time "
                f"({datetime.fromtimestamp(windows.watermark, UTC).isoformat()}) by more than "
                f"the {self.grace.five_seconds:g} s grace"
            )
            out.dead_letters.append(
                self._letter(DeadLetterReason.LATE, detail, partition, offset, key, value)
            )
        change = self.status.saw(event, wall)
        if change is not None:
            out.statuses.append(change)
        return out

    def close_due(self, wall: float) -> Outputs:
        """Close the windows every partition's event time has passed (once per batch)."""
        out = Outputs()
        emitted_at = datetime.fromtimestamp(wall, UTC)
        for windows in self.partitions.values():
            out.aggregates += windows.close(emitted_at)
        return out

    def idle(self, partition: int, wall: float) -> Outputs:
        """A partition with no backlog received nothing: let the wall clock close its windows."""
        out = Outputs()
        windows = self.partitions.get(partition)
        if windows is not None:
            windows.advance_to(wall)
            out.aggregates += windows.close(datetime.fromtimestamp(wall, UTC))
        return out

    def tick(self, wall: float) -> Outputs:
        """Periodic: servers silent for too long go offline."""
        return Outputs(statuses=self.status.expire(wall))

    def committable(self, partition: int) -> int | None:
        """The offset to commit for `partition`: replaying from it rebuilds every open window."""
        nxt = self.next_offsets.get(partition)
        if nxt is None:
            return None
        windows = self.partitions.get(partition)
        return nxt if windows is None else windows.committable_offset(nxt)

    def revoke(self, partition: int) -> None:
        """The partition went to another worker, which restores its checkpoint and replays."""
        self.partitions.pop(partition, None)
        self.next_offsets.pop(partition, None)
        self.replay_until.pop(partition, None)
        self.stored_watermark.pop(partition, None)

    def checkpoint(self, partition: int) -> tuple[list[tuple[bytes, bytes | None]], float | None]:
        """Changelog records for `partition` — each changed server's rollups (None: nothing left,
        a tombstone), then the progress record — and the watermark they save. Call `stored()`
        once Kafka has them all, and commit `committable()` as read with them."""
        windows = self.partitions.get(partition)
        nxt = self.next_offsets.get(partition)
        if windows is None or nxt is None or windows.watermark == -math.inf:
            return [], None
        records: list[tuple[bytes, bytes | None]] = []
        settled = self.stored_watermark.get(partition, -math.inf)
        for server_id, state in windows.checkpoint(settled):
            empty = not state.rollups and not state.emitted
            value = None if empty else orjson.dumps(state.to_json())
            records.append((server_id.encode(), value))
        # Replaying after a restart does not take back what the restored checkpoint covered.
        covered = max(nxt, self.replay_until.get(partition, 0))
        progress = {"watermark": windows.watermark, "next_offset": covered}
        records.append((PROGRESS_KEY, orjson.dumps(progress)))
        return records, windows.watermark

    def stored(self, partition: int, watermark: float) -> None:
        """The checkpoint that saved `watermark` is in Kafka."""
        if partition in self.partitions:
            self.stored_watermark[partition] = watermark

    def restore(self, partition: int, records: dict[bytes, bytes]) -> None:
        """Take over `partition` from its changelog (latest value per key, tombstones removed).
        Without a progress record the partition starts empty."""
        self.revoke(partition)
        windows = self.partitions[partition] = PartitionWindows(self.grace)
        raw_progress = records.get(PROGRESS_KEY)
        if raw_progress is None:
            return
        progress = orjson.loads(raw_progress)
        servers = {
            key.decode(): ServerRollups.from_json(key.decode(), orjson.loads(value))
            for key, value in records.items()
            if key != PROGRESS_KEY
        }
        windows.restore(float(progress["watermark"]), servers)
        self.replay_until[partition] = int(progress["next_offset"])
        self.stored_watermark[partition] = float(progress["watermark"])

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
