"""The fast decoding path: generated from the pydantic models, it accepts nothing they refuse,
gives the same values, and leaves every refusal's reason to them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import AwareDatetime, BaseModel, Field

from schemas import (
    DeadLetterReason,
    InvalidMessage,
    RawMetricEvent,
    WindowAggregate,
    decode_raw_event,
    decode_window_aggregate,
)
from schemas.fast import UnsupportedModel, fast_decoder
from schemas.messages import decode_message

DECODE = fast_decoder(RawMetricEvent)
STRICT = msgspec.json.Decoder(DECODE.struct)  # the fast path alone, no fallback

SERVER = "6f1c2a8e-4b7d-4e0a-9c35-0d2f5b8e91a4"
VALID: dict[str, Any] = {
    "server_id": SERVER,
    "timestamp": "2026-12-01T10:00:00Z",
    "cpu_usage": 12.5,
    "memory_usage": 40.0,
    "disk_usage": 70.25,
    "network_rx": 100,
    "network_tx": 200,
    "processes": [{"pid": 1, "name": "init", "cpu_usage": 0.5, "memory_usage": 0.1}],
}


def plain(value: Any) -> Any:
    """A decoded message (pydantic model or msgspec struct) as plain data."""
    if isinstance(value, BaseModel):
        return {k: plain(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, msgspec.Struct):
        return {k: plain(getattr(value, k)) for k in value.__struct_fields__}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def test_the_struct_has_the_models_fields_in_order() -> None:
    assert DECODE.struct.__struct_fields__ == tuple(RawMetricEvent.model_fields)


def test_a_valid_event_decodes_to_the_models_values() -> None:
    data = json.dumps(VALID | {"server_id": SERVER.upper(), "extra": 1}).encode()
    got = DECODE(data)
    assert isinstance(got, msgspec.Struct)  # the fast path took it
    assert plain(got) == plain(RawMetricEvent.model_validate_json(data))
    assert got.server_id == SERVER and got.timestamp.tzinfo is UTC


def test_an_offset_is_normalised_to_utc_as_the_model_does() -> None:
    got = DECODE(json.dumps(VALID | {"timestamp": "2026-12-01T12:00:00+02:00"}).encode())
    assert got.timestamp == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert got.timestamp.utcoffset() == timedelta(0)


def test_what_msgspec_refuses_the_model_decides() -> None:
    # Forms of timestamp the fast path leaves to the model, which takes them.
    before = DECODE.fallbacks
    for stamp, want in (
        ("2026-12-01t10:00:00z", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("2026-12-01T10:00:00.1234567Z", datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)),
    ):
        got = DECODE(json.dumps(VALID | {"timestamp": stamp}).encode())
        assert isinstance(got, RawMetricEvent) and got.timestamp == want
    assert DECODE.fallbacks == before + 2
    # Refused by both: the model's reason and detail, exactly.
    for bad in (
        b"{not json",
        json.dumps(VALID | {"cpu_usage": 101}).encode(),
        json.dumps(VALID | {"timestamp": "2026-12-01T10:00:00"}).encode(),
        json.dumps({k: v for k, v in VALID.items() if k != "server_id"}).encode(),
    ):
        with pytest.raises(InvalidMessage) as fast:
            DECODE(bad)
        with pytest.raises(InvalidMessage) as model:
            decode_message(RawMetricEvent, bad)
        assert (fast.value.reason, fast.value.detail) == (model.value.reason, model.value.detail)
        assert fast.value.reason in (DeadLetterReason.INVALID_JSON, DeadLetterReason.VALIDATION)


def test_decode_raw_event_takes_the_fast_path_and_keeps_its_limit() -> None:
    assert isinstance(decode_raw_event(json.dumps(VALID).encode()), msgspec.Struct)
    with pytest.raises(InvalidMessage) as exc:
        decode_raw_event(b" " * (64 * 1024 + 1))
    assert exc.value.reason is DeadLetterReason.OVERSIZE


def test_a_model_it_cannot_reproduce_is_refused_at_once() -> None:
    class Loose(BaseModel):
        n: int

    class Strict(BaseModel):
        model_config = {"strict": True, "allow_inf_nan": False, "extra": "ignore"}
        n: int = Field(multiple_of=2)

    with pytest.raises(UnsupportedModel, match="only strict models"):
        fast_decoder(Loose)
    with pytest.raises(UnsupportedModel, match=r"Strict\.n"):
        fast_decoder(Strict)


# -- msgspec accepts only what the model accepts, with the same values ----------------------

_ODD_STAMPS = [
    "2026-12-01T10:00:00Z", "2026-12-01t10:00:00z", "2026-12-01T10:00:00.123456789Z",
    "2026-12-01T10:00:60Z", "2026-12-01T24:00:00Z", "2026-12-01T10:00Z",
    "2026-12-01T10:00:00+0200", "2026-12-01T10:00:00+24:00", "2026-12-01",
    "20261201T100000Z", "2026-12-01T10:00:00,5Z", "2026-02-30T10:00:00Z",
    "2026-12-01T10:00:00.Z", "2026-12-01T10:00:00-00:00", "0000-01-01T00:00:00Z",
    " 2026-12-01T10:00:00Z", "2026-12-01T10:00:00 Z", "1764583200",
    "2026-12-01T10:00:00+23:59", "2026-12-01T10:00:00.1234567Z", "\u0662026-12-01T10:00:00Z",
]  # fmt: skip
_offsets = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
_datetimes = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_offsets
)
_stamps = st.one_of(
    _datetimes.map(lambda d: d.isoformat()),
    _datetimes.map(lambda d: d.isoformat(sep=" ")),
    _datetimes.map(lambda d: d.replace(tzinfo=None).isoformat()),
    _datetimes.map(lambda d: d.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
    st.sampled_from(_ODD_STAMPS),
    st.integers(),
    st.floats(),
    st.none(),
)
_numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-1.0, 101.0),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 100, -0.0, 100.0, 1e-320, 1e308, 409600, 409600.0000001]),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
)
_strings = st.one_of(
    st.just(SERVER),
    st.just(SERVER.upper()),
    st.text(max_size=40),
    st.text(min_size=4000, max_size=4200, alphabet="ab"),
    st.uuids().map(str),
    st.integers(),
    st.none(),
)


def _process() -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {},
        optional={
            "pid": _numbers,
            "name": st.one_of(_strings, st.text(min_size=250, max_size=260, alphabet="x")),
            "cpu_usage": _numbers,
            "memory_usage": _numbers,
            "more": _numbers,
        },
    )


_events = st.fixed_dictionaries(
    {},
    optional={
        "server_id": _strings,
        "timestamp": _stamps,
        "cpu_usage": _numbers,
        "memory_usage": _numbers,
        "disk_usage": _numbers,
        "network_rx": _numbers,
        "network_tx": _numbers,
        "processes": st.one_of(st.lists(_process(), max_size=52), st.none(), _numbers),
        "extra": _numbers,
    },
)


def _mostly_valid(draw: st.DrawFn) -> bytes:
    doc = dict(VALID)
    doc.update(draw(_events))
    text = json.dumps(doc)
    if draw(st.booleans()):  # a key given twice: the last one counts, in both
        key = draw(st.sampled_from(list(VALID)))
        text = text[:-1] + f', "{key}": {json.dumps(draw(_events).get(key, VALID[key]))}}}'
    return text.encode()


@settings(max_examples=1000, deadline=None)
@given(st.composite(_mostly_valid)())
def test_msgspec_accepts_only_what_the_model_accepts_with_its_values(data: bytes) -> None:
    try:
        STRICT.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return  # the model decides: tested above
    try:
        got = DECODE(data)
    except InvalidMessage:
        return  # a conversion after msgspec (a timestamp) left it to the model: refused
    if isinstance(got, RawMetricEvent):
        return  # ... or taken
    model = RawMetricEvent.model_validate_json(data)  # raises if the fast path was laxer
    assert plain(got) == plain(model)


# -- the same for the aggregates the sink reads ---------------------------------------------

WINDOW = fast_decoder(WindowAggregate)
WINDOW_STRICT = msgspec.json.Decoder(WINDOW.struct)
STATS = {"avg": 10.0, "min": 9.0, "max": 11.0, "last": 10.0}
AGGREGATE: dict[str, Any] = {
    "server_id": SERVER,
    "resolution": "5s",
    "window_start": "2026-12-01T10:00:00Z",
    "window_end": "2026-12-01T10:00:05Z",
    "revision": 0,
    "count": 5,
    "cpu_usage": STATS,
    "memory_usage": STATS,
    "disk_usage": STATS,
    "network_rx": 1,
    "network_tx": 2,
    "processes": VALID["processes"],
    "last_event_at": "2026-12-01T10:00:04Z",
    "emitted_at": "2026-12-01T10:00:10Z",
}
_stats = st.fixed_dictionaries(
    {}, optional={"avg": _numbers, "min": _numbers, "max": _numbers, "last": _numbers}
)
_aggregates = st.fixed_dictionaries(
    {},
    optional={
        "server_id": _strings,
        "resolution": st.one_of(st.sampled_from(["5s", "1h", "1d", "5S", "1m", ""]), _numbers),
        "window_start": _stamps,
        "emitted_at": _stamps,
        "revision": _numbers,
        "count": _numbers,
        "cpu_usage": st.one_of(_stats, _numbers),
        "disk_usage": _stats,
        "network_tx": _numbers,
        "processes": st.one_of(st.lists(_process(), max_size=52), st.none(), _numbers),
    },
)


@settings(max_examples=500, deadline=None)
@given(_aggregates)
def test_the_aggregates_fast_path_accepts_only_what_the_model_accepts(
    change: dict[str, Any],
) -> None:
    data = json.dumps(AGGREGATE | change).encode()
    try:
        WINDOW_STRICT.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return
    try:
        got = WINDOW(data)
    except InvalidMessage:
        return
    if isinstance(got, WindowAggregate):
        return
    assert plain(got) == plain(WindowAggregate.model_validate_json(data))


def test_a_tombstone_is_refused_with_the_models_reason() -> None:
    with pytest.raises(InvalidMessage) as fast:
        decode_window_aggregate(None)
    with pytest.raises(InvalidMessage) as model:
        decode_message(WindowAggregate, None)
    assert (fast.value.reason, fast.value.detail) == (model.value.reason, model.value.detail)
    assert isinstance(decode_window_aggregate(json.dumps(AGGREGATE).encode()), msgspec.Struct)


def test_a_timestamp_it_would_not_parse_is_refused() -> None:
    class Maybe(BaseModel):
        model_config = {"strict": True, "allow_inf_nan": False, "extra": "ignore"}
        at: AwareDatetime | None = None

    with pytest.raises(UnsupportedModel, match=r"Maybe\.at"):
        fast_decoder(Maybe)
