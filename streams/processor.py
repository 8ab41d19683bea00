"""What the stream worker does with each raw record, as pure logic over (record, clock).

`StreamProcessor` turns raw records into outputs — closed windows for the aggregate topics,
dead letters for `metrics.dlq.v1`, status changes for `metrics.status.v1` — and says up to
which offset each partition may be committed (the oldest record still needed by an open 5 s
window: a restart replays from there). The Kafka wiring (`fleetpulse stream`) only moves
records in and outputs out, so everything here is tested without a broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from schemas import (
    DeadLetter,
    DeadLetterReason,
    InvalidMessage,
    RawMetricEvent,
    ServerState,
    ServerStatusChange,
    WindowAggregate,
    decode_raw_event,
)
from streams.windows import Grace, PartitionWindows

COMPONENT = "stream"


@dataclass
class Outputs:
    aggregates: list[WindowAggregate] = field(default_factory=list)
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
        self.status = StatusTracker(offline_after)

    def record(
        self, partition: int, offset: int, key: bytes | None, value: bytes, wall: float
    ) -> Outputs:
        """Take one raw record; return its dead letter or status change, if any. Windows it
        completes are closed by the next `close_due()`."""
        out = Outputs()
        self.next_offsets[partition] = offset + 1
        windows = self.partitions.setdefault(partition, PartitionWindows(self.grace))
        try:
            event = decode_raw_event(value)
        except InvalidMessage as exc:
            out.dead_letters.append(
                self._letter(exc.reason, exc.detail, partition, offset, key, value)
            )
            return out
        if not windows.add(event, offset):
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
        """The partition went to another worker, which rebuilds its windows by replaying."""
        self.partitions.pop(partition, None)
        self.next_offsets.pop(partition, None)

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
