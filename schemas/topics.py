"""Kafka topics: names, partition counts and retention, in one place.

These names are the public contract. A producer in any language that writes a valid
`RawMetricEvent` as JSON to `metrics.raw.v1`, keyed by `server_id`, is a FleetPulse producer;
any consumer may subscribe to the aggregate and status topics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from aiokafka.partitioner import DefaultPartitioner

_HOUR_MS: Final = 3_600_000
_DAY_MS: Final = 24 * _HOUR_MS


_DEFAULT_PARTITIONER: Final = DefaultPartitioner()
_PARTITION_CACHE_MAX: Final = 200_000


class KeyPartitioner:
    """Kafka's default partition of a keyed record (murmur2 of the key, as every stock client
    computes it): where a server's records land. Cached per key, since aiokafka's murmur2 is
    pure Python and costs more than encoding the record. Fits `AIOKafkaProducer(partitioner=)`.
    """

    def __init__(self) -> None:
        self._cache: dict[bytes, int] = {}
        self._count = 0

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(_DEFAULT_PARTITIONER(key, all_partitions, available))
        if len(all_partitions) != self._count or len(self._cache) > _PARTITION_CACHE_MAX:
            self._cache.clear()
            self._count = len(all_partitions)
        p = self._cache.get(key)
        if p is None:
            p = self._cache[key] = int(_DEFAULT_PARTITIONER(key, all_partitions, all_partitions))
        return p


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
