"""Pydantic v2 models for every message on the FleetPulse topics.

Unknown fields are ignored so that newer producers can add fields without breaking older
consumers; a field's meaning never changes within a `.v1` topic.
"""

from __future__ import annotations

import base64
import itertools
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Final, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationError,
)

from schemas.fast import FastDecoder
from schemas.resolutions import RESOLUTIONS, Resolution

#: Largest raw event accepted, in bytes of JSON. A top-50 process list is about 5 KiB.
MAX_RAW_EVENT_BYTES: Final = 64 * 1024
#: Longest `processes` list accepted in a raw event.
MAX_PROCESSES: Final = 50
#: Most buckets in a quantile sketch (every positive float at 1 % needs about 35,500).
MAX_SKETCH_BUCKETS: Final = 40_000
#: Longest original payload kept in a dead letter; longer ones are cut and flagged.
MAX_DEAD_LETTER_PAYLOAD_BYTES: Final = 256 * 1024

_UUID_PATTERN: Final = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


#: A server's id: a UUID in its 36-character text form, stored lower case.
ServerId = Annotated[
    str,
    Field(
        min_length=36,
        max_length=36,
        pattern=_UUID_PATTERN,
        examples=["6f1c2a8e-4b7d-4e0a-9c35-0d2f5b8e91a4"],
    ),
    AfterValidator(str.lower),
]
#: A timestamp with an explicit offset, normalised to UTC. Naive timestamps are rejected.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
#: A percentage in 0..100.
Percent = Annotated[float, Field(ge=0.0, le=100.0)]


class _Message(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        allow_inf_nan=False,
        # JSON types are the contract: "10" is not a number, 1.5 is not a byte count.
        strict=True,
        str_max_length=4096,
    )

    def to_json_bytes(self) -> bytes:
        """The message as compact UTF-8 JSON, the wire format on every topic."""
        return self.model_dump_json().encode()


class ProcessInfo(_Message):
    """One of the top processes on a host at sampling time."""

    pid: NonNegativeInt = Field(description="Process id.")
    name: str = Field(max_length=256, description="Process name.")
    cpu_usage: float = Field(
        ge=0.0,
        le=100.0 * 4096,
        description="CPU use in percent of one core (may exceed 100 on several cores).",
    )
    memory_usage: Percent = Field(description="Resident memory in percent of the host's RAM.")


class RawMetricEvent(_Message):
    """One sample of one host, normally one per second, on `metrics.raw.v1` keyed by server_id."""

    server_id: ServerId = Field(description="The server's id in the registry (UUID text).")
    timestamp: UtcDatetime = Field(
        description="When the sample was taken (ISO 8601 with offset; stored as UTC)."
    )
    cpu_usage: Percent = Field(description="CPU use over all cores since the previous sample, %.")
    memory_usage: Percent = Field(description="Memory in use, % of total.")
    disk_usage: Percent = Field(description="Space used on the watched mount, % of its size.")
    network_rx: NonNegativeInt = Field(description="Bytes received since the previous sample.")
    network_tx: NonNegativeInt = Field(description="Bytes sent since the previous sample.")
    processes: list[ProcessInfo] = Field(
        default_factory=list,
        max_length=MAX_PROCESSES,
        description=f"Top processes by CPU, at most {MAX_PROCESSES}.",
    )


*_FINER, _COARSEST = (r.name for r in RESOLUTIONS)
#: The resolutions in a sentence ("5s, 1h or 1d").
_RESOLUTION_NAMES: Final = f"{', '.join(_FINER)} or {_COARSEST}" if _FINER else _COARSEST


class QuantileSketch(_Message):
    """The samples of a window as a mergeable quantile sketch (DDSketch's logarithmic mapping,
    relative accuracy 1 %): how many samples fell in each bucket. A sample x > 0 is in bucket
    ceil(ln(x) / ln(gamma)), gamma = 1.01 / 0.99; zero in bucket -2147483648. Sketches merge by
    adding the counts of equal keys; the quantile q is the bucket of the sample of rank
    floor(q * (n - 1)), valued 2 gamma^k / (gamma + 1) (`schemas/sketch.py`)."""

    keys: list[int] = Field(
        max_length=MAX_SKETCH_BUCKETS, description="Bucket keys, ascending, each once."
    )
    counts: list[Annotated[int, Field(ge=1)]] = Field(
        max_length=MAX_SKETCH_BUCKETS,
        description="Samples in each bucket, in the order of `keys`; they add up to the "
        "window's `count`.",
    )


class MetricStats(_Message):
    """Summary of one percentage metric over a window."""

    avg: Percent = Field(description="Mean of the samples in the window.")
    min: Percent = Field(description="Smallest sample.")
    max: Percent = Field(description="Largest sample.")
    last: Percent | None = Field(
        default=None, description="The window's latest sample (5 s windows only)."
    )
    p50: Percent | None = Field(
        default=None,
        description="Median of the samples, within 1 % of the exact one (hourly and daily "
        "windows; since schema 1.1).",
    )
    p90: Percent | None = Field(default=None, description="90th percentile, as `p50`.")
    p95: Percent | None = Field(default=None, description="95th percentile, as `p50`.")
    p99: Percent | None = Field(default=None, description="99th percentile, as `p50`.")
    sketch: QuantileSketch | None = Field(
        default=None,
        description="The samples' quantile sketch, from which the percentiles come and with "
        "which windows merge (hourly and daily windows; since schema 1.1). Absent when a "
        "part of the window was restored from a worker's state without one.",
    )


class WindowAggregate(_Message):
    """A closed event-time window for one server, on `metrics.agg.<resolution>.v1`.

    Schema 1.1 added the percentiles and the quantile sketch of each metric of the hourly and
    daily windows (`MetricStats.p50` … `p99`, `sketch`): optional fields that a 1.0 consumer
    ignores, as it ignores every field it does not know."""

    model_config = ConfigDict(json_schema_extra={"version": "1.1"})

    server_id: ServerId
    resolution: Resolution = Field(description=f"Window size: {_RESOLUTION_NAMES}.")
    window_start: UtcDatetime = Field(description="Inclusive start of the window (UTC).")
    window_end: UtcDatetime = Field(description="Exclusive end of the window (UTC).")
    revision: NonNegativeInt = Field(
        default=0,
        description="0 when the window first closes; each late sample absorbed afterwards "
        "emits it again, complete, with the next number. The highest revision of a window "
        "replaces the earlier ones.",
    )
    count: Annotated[int, Field(ge=1)] = Field(description="Number of raw events in the window.")
    cpu_usage: MetricStats
    memory_usage: MetricStats
    disk_usage: MetricStats
    network_rx: NonNegativeInt = Field(description="Bytes received in the window (sum).")
    network_tx: NonNegativeInt = Field(description="Bytes sent in the window (sum).")
    processes: list[ProcessInfo] | None = Field(
        default=None,
        max_length=MAX_PROCESSES,
        description="The last process snapshot of the window (5 s windows only).",
    )
    last_event_at: UtcDatetime = Field(description="Timestamp of the latest event in the window.")
    emitted_at: UtcDatetime = Field(description="When the stream closed and sent the window.")


class ServerState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class ServerStatusChange(_Message):
    """A server went online (first event) or offline (silent too long), on `metrics.status.v1`."""

    server_id: ServerId
    status: ServerState
    last_event_at: UtcDatetime = Field(description="Timestamp of the server's latest event.")
    changed_at: UtcDatetime = Field(description="When the stream noticed the change.")


class DeadLetterReason(StrEnum):
    """Why a record was dead-lettered."""

    INVALID_JSON = "invalid_json"
    VALIDATION = "validation"
    OVERSIZE = "oversize"
    LATE = "late"
    DB_REJECTED = "db_rejected"


class DeadLetter(_Message):
    """A record that could not be processed, with the reason and its original bytes."""

    reason: DeadLetterReason
    error: str = Field(max_length=4096, description="What was wrong, for a human.")
    component: str = Field(max_length=64, description="Which service rejected it.")
    source_topic: str = Field(max_length=249)
    source_partition: int | None = None
    source_offset: int | None = None
    key: str | None = Field(default=None, max_length=1024, description="Record key, as text.")
    payload_b64: str = Field(description="The original value, base64 (possibly cut, see below).")
    payload_size: NonNegativeInt = Field(description="Size of the original value in bytes.")
    payload_truncated: bool = Field(
        default=False, description=f"True if cut to {MAX_DEAD_LETTER_PAYLOAD_BYTES} bytes."
    )
    failed_at: UtcDatetime
    model_config = ConfigDict(str_max_length=1024 * 1024)

    @classmethod
    def for_payload(
        cls,
        payload: bytes,
        *,
        reason: DeadLetterReason,
        error: str,
        component: str,
        source_topic: str,
        source_partition: int | None = None,
        source_offset: int | None = None,
        key: bytes | None = None,
        failed_at: datetime | None = None,
    ) -> DeadLetter:
        """Build a dead letter around the original bytes, cutting them to the size cap."""
        kept = payload[:MAX_DEAD_LETTER_PAYLOAD_BYTES]
        return cls(
            reason=reason,
            error=error[:4096],
            component=component,
            source_topic=source_topic,
            source_partition=source_partition,
            source_offset=source_offset,
            key=key.decode("utf-8", "replace")[:1024] if key is not None else None,
            payload_b64=base64.b64encode(kept).decode(),
            payload_size=len(payload),
            payload_truncated=len(kept) < len(payload),
            failed_at=failed_at or datetime.now(UTC),
        )

    def payload(self) -> bytes:
        """The original bytes (as kept)."""
        return base64.b64decode(self.payload_b64)


class AlertStatus(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class AlertEvent(_Message):
    """An alert of `fleetpulse alerts` began firing or was resolved, on `metrics.alerts.v1`
    (key = fingerprint). An event is sent once per change; a consumer that reads one twice
    (after an evaluator's restart) knows it by its `event_id`."""

    event_id: str = Field(
        max_length=36,
        description="Derived from the fingerprint, the status and `starts_at`: the same event "
        "always has the same id.",
    )
    fingerprint: str = Field(
        max_length=32, description="Identifies the alert: one rule on one server."
    )
    status: AlertStatus
    rule_id: NonNegativeInt
    rule_name: str = Field(max_length=100)
    rule_revision: NonNegativeInt = Field(description="The rule's revision that judged.")
    kind: str = Field(max_length=16, description="`threshold` or `absence`.")
    severity: str = Field(max_length=16)
    server_id: ServerId
    starts_at: UtcDatetime = Field(description="When the alert began firing.")
    ends_at: UtcDatetime | None = Field(
        default=None, description="When it was resolved (resolved events only)."
    )
    value: float | None = Field(
        default=None,
        description="What crossed the threshold (the window's statistic), or for an absence "
        "the seconds since the server was last heard of.",
    )
    summary: str = Field(max_length=1024, description="One line, for a human.")
    reason: str | None = Field(
        default=None,
        max_length=32,
        description="Why a resolved alert ended: `recovered`, `rule_edited`, `rule_deleted`, "
        "`out_of_scope`.",
    )
    labels: dict[str, str] = Field(description="The labels sent to Alertmanager.")
    emitted_at: UtcDatetime


M = TypeVar("M", bound=BaseModel)


class InvalidMessage(ValueError):
    """A message that fails to decode; `reason` says which dead-letter reason applies."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def describe_validation_error(exc: ValidationError) -> str:
    """A one-line summary naming every bad field, without echoing the input values."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def decode_message(model: type[M], data: bytes | None) -> M:
    """Validate a message's bytes against `model`.

    Raises `InvalidMessage` with reason `invalid_json` (not JSON at all) or `validation`.
    """
    try:
        return model.model_validate_json(data or b"")
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise InvalidMessage(
                DeadLetterReason.INVALID_JSON, describe_validation_error(exc)
            ) from None
        raise InvalidMessage(DeadLetterReason.VALIDATION, describe_validation_error(exc)) from None


def decode_raw_event(data: bytes) -> RawMetricEvent:
    """Validate raw bytes from `metrics.raw.v1` (into `RawMetricEvent`, or into its msgspec
    struct: the same attributes, see `schemas.fast`).

    Raises `InvalidMessage` with reason `oversize`, `invalid_json` or `validation`.
    """
    if len(data) > MAX_RAW_EVENT_BYTES:
        raise InvalidMessage(
            DeadLetterReason.OVERSIZE,
            f"{len(data)} bytes is over the {MAX_RAW_EVENT_BYTES}-byte limit",
        )
    return _decode_raw(data)


#: The hot paths (stream, sink): msgspec first, the model for whatever msgspec refuses.
_decode_raw: Final = FastDecoder(RawMetricEvent, lambda data: decode_message(RawMetricEvent, data))
_decode_window: Final = FastDecoder(
    WindowAggregate, lambda data: decode_message(WindowAggregate, data)
)


def decode_window_aggregate(data: bytes | None) -> WindowAggregate:
    """Validate a record from an aggregate topic (into `WindowAggregate`, or into its msgspec
    struct: the same attributes, see `schemas.fast`). Raises `InvalidMessage` with reason
    `invalid_json` or `validation` (also for a quantile sketch whose keys are not ascending,
    whose arrays differ in length, or whose counts do not add up to the window's `count`)."""
    agg = _decode_window(data)
    for name in _SKETCHED:
        sk = getattr(agg, name).sketch
        if sk is not None:
            problem = sketch_problem(sk.keys, sk.counts, agg.count)
            if problem is not None:
                raise InvalidMessage(DeadLetterReason.VALIDATION, f"{name}.sketch: {problem}")
    return agg


_SKETCHED: Final = ("cpu_usage", "memory_usage", "disk_usage")


def sketch_problem(keys: list[int], counts: list[int], count: int) -> str | None:
    """What is wrong with a window's sketch (None: nothing)."""
    if len(keys) != len(counts):
        return f"{len(keys)} keys but {len(counts)} counts"
    if any(a >= b for a, b in itertools.pairwise(keys)):
        return "keys not strictly ascending"
    total = sum(counts)
    if total != count:
        return f"counts add up to {total}, not the window's count {count}"
    return None


#: Every message model, by the file stem of its JSON Schema under `schemas/json/`.
MESSAGE_MODELS: Final[dict[str, type[_Message]]] = {
    "raw_metric_event.v1": RawMetricEvent,
    "window_aggregate.v1": WindowAggregate,
    "server_status_change.v1": ServerStatusChange,
    "dead_letter.v1": DeadLetter,
    "alert_event.v1": AlertEvent,
}

__all__ = [
    "MAX_DEAD_LETTER_PAYLOAD_BYTES",
    "MAX_PROCESSES",
    "MAX_RAW_EVENT_BYTES",
    "MESSAGE_MODELS",
    "AlertEvent",
    "AlertStatus",
    "DeadLetter",
    "DeadLetterReason",
    "InvalidMessage",
    "MetricStats",
    "ProcessInfo",
    "QuantileSketch",
    "RawMetricEvent",
    "Resolution",
    "ServerId",
    "ServerState",
    "ServerStatusChange",
    "WindowAggregate",
    "decode_raw_event",
    "decode_window_aggregate",
    "describe_validation_error",
]
