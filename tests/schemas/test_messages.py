"""Unit tests of the message models: valid and invalid events, boundaries, dead letters."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import (
    MAX_PROCESSES,
    MAX_RAW_EVENT_BYTES,
    DeadLetter,
    DeadLetterReason,
    InvalidMessage,
    RawMetricEvent,
    Resolution,
    ServerState,
    ServerStatusChange,
    WindowAggregate,
    decode_raw_event,
    decode_window_aggregate,
)
from schemas.messages import MAX_DEAD_LETTER_PAYLOAD_BYTES
from tests.factories import SERVER_ID, aggregate, event_dict


def decode(d: dict[str, Any]) -> RawMetricEvent:
    return decode_raw_event(json.dumps(d).encode())


def reason_of(d: dict[str, Any] | bytes) -> tuple[DeadLetterReason, str]:
    data = d if isinstance(d, bytes) else json.dumps(d).encode()
    with pytest.raises(InvalidMessage) as info:
        decode_raw_event(data)
    return info.value.reason, info.value.detail


def test_valid_event_decodes() -> None:
    e = decode(event_dict())
    assert e.server_id == SERVER_ID
    assert e.timestamp == datetime(2026, 11, 25, 10, 0, 1, tzinfo=UTC)
    assert e.processes[0].name == "init"


def test_unknown_fields_are_ignored() -> None:
    e = decode(event_dict(load_avg=[1, 2, 3], agent_version="9.9"))
    assert not hasattr(e, "load_avg")


def test_timestamp_is_normalised_to_utc() -> None:
    e = decode(event_dict(timestamp="2026-11-25T19:00:01+09:00"))
    assert e.timestamp == datetime(2026, 11, 25, 10, 0, 1, tzinfo=UTC)
    assert e.timestamp.utcoffset() == timedelta(0)


def test_naive_timestamp_is_rejected() -> None:
    reason, detail = reason_of(event_dict(timestamp="2026-11-25T10:00:01"))
    assert reason is DeadLetterReason.VALIDATION
    assert "timestamp" in detail


def test_server_id_is_lowercased_and_must_be_a_uuid() -> None:
    assert decode(event_dict(server_id=SERVER_ID.upper())).server_id == SERVER_ID
    for bad in ["x" * 36, SERVER_ID[:-1], SERVER_ID + "0", ""]:
        reason, detail = reason_of(event_dict(server_id=bad))
        assert reason is DeadLetterReason.VALIDATION
        assert detail.startswith("server_id")


@pytest.mark.parametrize("field", ["cpu_usage", "memory_usage", "disk_usage"])
@pytest.mark.parametrize("value", [0, 0.0, 100, 100.0, 55.5])
def test_percent_boundaries_accepted(field: str, value: float) -> None:
    assert getattr(decode(event_dict(**{field: value})), field) == value


@pytest.mark.parametrize("field", ["cpu_usage", "memory_usage", "disk_usage"])
@pytest.mark.parametrize("value", [-0.001, 100.001, 1e308, "high", None])
def test_percent_out_of_range_rejected(field: str, value: Any) -> None:
    reason, detail = reason_of(event_dict(**{field: value}))
    assert reason is DeadLetterReason.VALIDATION
    assert field in detail


def test_nan_and_infinity_rejected() -> None:
    raw = json.dumps(event_dict()).replace("12.5", "NaN").encode()
    reason, _ = reason_of(raw)
    assert reason in (DeadLetterReason.VALIDATION, DeadLetterReason.INVALID_JSON)
    raw = json.dumps(event_dict()).replace("12.5", "Infinity").encode()
    reason, _ = reason_of(raw)
    assert reason in (DeadLetterReason.VALIDATION, DeadLetterReason.INVALID_JSON)


@pytest.mark.parametrize("field", ["network_rx", "network_tx"])
def test_byte_counts(field: str) -> None:
    assert getattr(decode(event_dict(**{field: 0})), field) == 0
    assert getattr(decode(event_dict(**{field: 2**62})), field) == 2**62
    for bad in [-1, 1.5, "10"]:
        reason, detail = reason_of(event_dict(**{field: bad}))
        assert reason is DeadLetterReason.VALIDATION, bad
        assert field in detail


def test_missing_field_named() -> None:
    d = event_dict()
    del d["disk_usage"]
    reason, detail = reason_of(d)
    assert reason is DeadLetterReason.VALIDATION
    assert "disk_usage: Field required" in detail


def test_processes_bounded() -> None:
    proc = {"pid": 1, "name": "p", "cpu_usage": 1.0, "memory_usage": 1.0}
    assert len(decode(event_dict(processes=[proc] * MAX_PROCESSES)).processes) == MAX_PROCESSES
    reason, detail = reason_of(event_dict(processes=[proc] * (MAX_PROCESSES + 1)))
    assert reason is DeadLetterReason.VALIDATION
    assert "processes" in detail
    assert decode(event_dict(processes=[])).processes == []
    d = event_dict()
    del d["processes"]
    assert decode(d).processes == []


def test_process_fields_validated() -> None:
    bad = {"pid": -1, "name": "p", "cpu_usage": 1.0, "memory_usage": 101}
    reason, detail = reason_of(event_dict(processes=[bad]))
    assert reason is DeadLetterReason.VALIDATION
    assert "processes.0.pid" in detail and "processes.0.memory_usage" in detail
    # A process may use several cores: over 100 % of one core is valid.
    multi = {"pid": 7, "name": "java", "cpu_usage": 350.0, "memory_usage": 5.0}
    assert decode(event_dict(processes=[multi])).processes[0].cpu_usage == 350.0


def test_oversize_rejected_before_parsing() -> None:
    data = b" " * (MAX_RAW_EVENT_BYTES - 100) + json.dumps(event_dict()).encode()
    assert len(data) > MAX_RAW_EVENT_BYTES
    reason, detail = reason_of(data)
    assert reason is DeadLetterReason.OVERSIZE
    assert str(MAX_RAW_EVENT_BYTES) in detail


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b"\xff\xfe", b"[1,2]", b"null"])
def test_garbage_is_invalid_json_or_validation(data: bytes) -> None:
    reason, _ = reason_of(data)
    assert reason in (DeadLetterReason.INVALID_JSON, DeadLetterReason.VALIDATION)


def test_errors_do_not_echo_input_values() -> None:
    secret = "hunter2-password-value"
    _, detail = reason_of(event_dict(cpu_usage=secret))
    assert secret not in detail


@given(
    cpu=st.floats(0, 100),
    mem=st.floats(0, 100),
    disk=st.floats(0, 100),
    rx=st.integers(0, 2**63 - 1),
    tx=st.integers(0, 2**63 - 1),
    offset_minutes=st.integers(-14 * 60, 14 * 60),
    micros=st.integers(0, 999_999),
)
def test_round_trip_through_json(
    cpu: float, mem: float, disk: float, rx: int, tx: int, offset_minutes: int, micros: int
) -> None:
    tz = timezone(timedelta(minutes=offset_minutes))
    e = RawMetricEvent(
        server_id=SERVER_ID,
        timestamp=datetime(2026, 1, 2, 3, 4, 5, micros, tzinfo=tz),
        cpu_usage=cpu,
        memory_usage=mem,
        disk_usage=disk,
        network_rx=rx,
        network_tx=tx,
    )
    back = RawMetricEvent.model_validate_json(e.to_json_bytes())
    assert back == e
    assert back.timestamp.tzinfo == UTC
    fast = decode_raw_event(e.to_json_bytes())  # the stream's path: the same values
    assert {k: getattr(fast, k) for k in RawMetricEvent.model_fields} == dict(e)
    assert fast.timestamp.tzinfo == UTC


def test_window_aggregate_and_status_validate() -> None:
    now = datetime(2026, 11, 25, 10, 0, 5, tzinfo=UTC)
    stats = {"avg": 10.0, "min": 5.0, "max": 15.0, "last": 12.0}
    agg_dict = {
        "server_id": SERVER_ID,
        "resolution": "5s",
        "window_start": "2026-11-25T10:00:00Z",
        "window_end": "2026-11-25T10:00:05Z",
        "count": 5,
        "cpu_usage": stats,
        "memory_usage": stats,
        "disk_usage": stats,
        "network_rx": 10,
        "network_tx": 20,
        "processes": [],
        "last_event_at": "2026-11-25T10:00:04Z",
        "emitted_at": now.isoformat(),
    }
    agg = WindowAggregate.model_validate_json(json.dumps(agg_dict))
    assert agg.resolution.seconds == 5
    assert WindowAggregate.model_validate_json(agg.to_json_bytes()) == agg
    with pytest.raises(ValidationError):
        WindowAggregate.model_validate_json(json.dumps({**agg_dict, "count": 0}))
    with pytest.raises(ValidationError):
        WindowAggregate.model_validate_json(json.dumps({**agg_dict, "resolution": "10s"}))
    status = ServerStatusChange(
        server_id=SERVER_ID, status=ServerState.OFFLINE, last_event_at=now, changed_at=now
    )
    assert ServerStatusChange.model_validate_json(status.to_json_bytes()) == status


def test_dead_letter_keeps_original_bytes_and_cuts_huge_ones() -> None:
    original = b'{"not": "valid"\xff'
    dl = DeadLetter.for_payload(
        original,
        reason=DeadLetterReason.INVALID_JSON,
        error="bad",
        component="stream",
        source_topic="metrics.raw.v1",
        source_partition=2,
        source_offset=41,
        key=b"abc",
    )
    back = DeadLetter.model_validate_json(dl.to_json_bytes())
    assert back.payload() == original
    assert back.payload_size == len(original) and not back.payload_truncated
    assert back.key == "abc"

    huge = b"x" * (MAX_DEAD_LETTER_PAYLOAD_BYTES + 10)
    dl = DeadLetter.for_payload(
        huge, reason=DeadLetterReason.OVERSIZE, error="big", component="stream", source_topic="t"
    )
    assert dl.payload_truncated and dl.payload_size == len(huge)
    assert len(base64.b64decode(dl.payload_b64)) == MAX_DEAD_LETTER_PAYLOAD_BYTES


def _hourly_with_sketch(**sketch_fields: Any) -> bytes:
    """An hourly aggregate of 4 samples whose CPU sketch is replaced by `sketch_fields`."""
    doc = json.loads(
        aggregate(
            SERVER_ID,
            datetime(2026, 11, 25, 10, tzinfo=UTC),
            Resolution.ONE_HOUR,
            samples={"cpu_usage": [0.0, 10.0, 10.0, 100.0]},
        ).to_json_bytes()
    )
    doc["cpu_usage"]["sketch"] = sketch_fields
    return json.dumps(doc).encode()


def test_a_rollup_carries_its_percentiles_and_sketch_through_json() -> None:
    data = _hourly_with_sketch(keys=[-(2**31), 117, 231], counts=[1, 2, 1])
    agg = decode_window_aggregate(data)
    assert agg.cpu_usage.sketch is not None and agg.cpu_usage.sketch.counts == [1, 2, 1]
    assert agg.cpu_usage.p50 is not None and abs(agg.cpu_usage.p50 - 10.0) <= 0.1


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"keys": [1, 2], "counts": [4]}, "2 keys but 1 counts"),
        ({"keys": [2, 1], "counts": [2, 2]}, "keys not strictly ascending"),
        ({"keys": [1, 1], "counts": [2, 2]}, "keys not strictly ascending"),
        ({"keys": [1, 2], "counts": [2, 3]}, "counts add up to 5, not the window's count 4"),
        ({"keys": [1], "counts": [0]}, "counts.0"),
        ({"keys": ["a"], "counts": [4]}, "keys.0"),
    ],
)
def test_a_sketch_of_the_wrong_shape_is_refused_with_what_is_wrong(
    fields: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_window_aggregate(_hourly_with_sketch(**fields))
    assert info.value.reason is DeadLetterReason.VALIDATION
    assert problem in info.value.detail
