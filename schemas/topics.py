"""Kafka topics: names, partition counts and retention, in one place.

These names are the public contract. A producer in any language that writes a valid
`RawMetricEvent` as JSON to `metrics.raw.v1`, keyed by `server_id`, is a FleetPulse producer;
any consumer may subscribe to the aggregate and status topics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

_HOUR_MS: Final = 3_600_000
_DAY_MS: Final = 24 * _HOUR_MS


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How a topic is created: `fleetpulse topics create` makes exactly this."""

    name: str
    partitions: int
    retention_ms: int
    cleanup_policy: str = "delete"
    description: str = ""
    extra_config: dict[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, str]:
        """Topic-level broker configuration for CreateTopics."""
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": self.cleanup_policy,
            **self.extra_config,
        }


# Partition counts bound how far each stage scales out: one consumer per partition.
# Every topic is keyed by server_id, so all of a server's messages stay in order.
RAW: Final = TopicSpec(
    name="metrics.raw.v1",
    partitions=6,
    retention_ms=1 * _DAY_MS,
    description="1 s raw metric events (RawMetricEvent), key = server_id",
)
AGG_5S: Final = TopicSpec(
    name="metrics.agg.5s.v1",
    partitions=6,
    retention_ms=7 * _DAY_MS,
    description="closed 5 s windows (WindowAggregate, resolution 5s), key = server_id",
)
AGG_1H: Final = TopicSpec(
    name="metrics.agg.1h.v1",
    partitions=3,
    retention_ms=30 * _DAY_MS,
    description="closed hourly windows (WindowAggregate, resolution 1h), key = server_id",
)
AGG_1D: Final = TopicSpec(
    name="metrics.agg.1d.v1",
    partitions=3,
    retention_ms=90 * _DAY_MS,
    description="closed daily windows (WindowAggregate, resolution 1d), key = server_id",
)
STATUS: Final = TopicSpec(
    name="metrics.status.v1",
    partitions=3,
    retention_ms=30 * _DAY_MS,
    # Compacted: the newest status per server is always there for a consumer that starts late.
    cleanup_policy="compact,delete",
    description="online/offline changes (ServerStatusChange), key = server_id",
)
DLQ: Final = TopicSpec(
    name="metrics.dlq.v1",
    partitions=3,
    retention_ms=14 * _DAY_MS,
    description="rejected input with its reason and original bytes (DeadLetter)",
)

ALL_TOPICS: Final[tuple[TopicSpec, ...]] = (RAW, AGG_5S, AGG_1H, AGG_1D, STATUS, DLQ)
