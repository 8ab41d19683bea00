"""The FleetPulse contract: topic names, message models and shared connection settings."""

from schemas.messages import (
    MAX_PROCESSES,
    MAX_RAW_EVENT_BYTES,
    DeadLetter,
    DeadLetterReason,
    InvalidMessage,
    MetricStats,
    ProcessInfo,
    RawMetricEvent,
    Resolution,
    ServerState,
    ServerStatusChange,
    WindowAggregate,
    decode_raw_event,
)
from schemas.topics import AGG_1D, AGG_1H, AGG_5S, ALL_TOPICS, DLQ, RAW, STATUS, TopicSpec

__all__ = [
    "AGG_1D",
    "AGG_1H",
    "AGG_5S",
    "ALL_TOPICS",
    "DLQ",
    "MAX_PROCESSES",
    "MAX_RAW_EVENT_BYTES",
    "RAW",
    "STATUS",
    "DeadLetter",
    "DeadLetterReason",
    "InvalidMessage",
    "MetricStats",
    "ProcessInfo",
    "RawMetricEvent",
    "Resolution",
    "ServerState",
    "ServerStatusChange",
    "TopicSpec",
    "WindowAggregate",
    "decode_raw_event",
]
