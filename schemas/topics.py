"""Kafka topics: names, partition counts and retention, in one place (the aggregate topics,
one per resolution, are rows of `schemas/resolutions.py`).

These names are the public contract. A producer in any language that writes a valid
`RawMetricEvent` as JSON to `metrics.raw.v1`, keyed by `server_id`, is a FleetPulse producer;
any consumer may subscribe to the aggregate and status topics.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from schemas.resolutions import RESOLUTIONS, Resolution, ResolutionSpec

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
ALERTS: Final = TopicSpec(
    name="metrics.alerts.v1",
    partitions=3,
    retention_ms=30 * _DAY_MS,
    description="firing and resolved alerts of `fleetpulse alerts` (AlertEvent), key = fingerprint",
)


def aggregate_topics(table: Iterable[ResolutionSpec] = RESOLUTIONS) -> dict[str, TopicSpec]:
    """The aggregate topic of each resolution in `table` (the resolutions table by default)."""
    return {
        r.name: TopicSpec(
            name=r.topic,
            partitions=r.topic_partitions,
            retention_ms=r.topic_retention_days * _DAY_MS,
            description=f"closed {r.label} windows (WindowAggregate, resolution {r.name}), "
            "key = server_id",
        )
        for r in table
    }


def all_topics(table: Iterable[ResolutionSpec] = RESOLUTIONS) -> tuple[TopicSpec, ...]:
    """Every topic of the contract, the aggregate ones those of `table`'s resolutions."""
    return (RAW, *aggregate_topics(table).values(), STATUS, DLQ, ALERTS)


#: The aggregate topic of each resolution, by resolution name.
AGGREGATE_TOPICS: Final = aggregate_topics()
AGG_5S: Final = AGGREGATE_TOPICS[Resolution.FIVE_SECONDS]
AGG_1H: Final = AGGREGATE_TOPICS[Resolution.ONE_HOUR]
AGG_1D: Final = AGGREGATE_TOPICS[Resolution.ONE_DAY]
ALL_TOPICS: Final = all_topics()


def changelog_topic(name: str, partitions: int) -> TopicSpec:
    """A stream group's compacted changelog: one partition per raw partition, kept forever."""
    return TopicSpec(
        name,
        partitions=partitions,
        retention_ms=-1,
        cleanup_policy="compact",
        description="hourly/daily state of the stream group, per raw partition",
        # Small segments keep the uncompacted tail, and so a takeover's read, short.
        extra_config={"segment.ms": "60000", "min.cleanable.dirty.ratio": "0.1"},
    )
