"""The Quix peer's aggregation (benchmarks/quix/app.py) writes what our window engine writes
for the same samples, so the stream benchmark compares the same work."""

from __future__ import annotations

import random

import orjson

from benchmarks.quix.app import (
    add_sample,
    aggregate_message,
    event_ms,
    first_sample,
    merge_rollup,
    seed_rollup,
)
from producers.simulator import SimulatedHost, iso_second
from schemas import RawMetricEvent, Resolution, WindowAggregate
from schemas.sketch import QUANTILES
from streams.windows import BASE, WindowAcc

T0 = 1_796_180_400  # an hour's start, so the rollups below begin with it


def _samples(host: SimulatedHost, start: int) -> list[bytes]:
    return [host.event_json(t, iso_second(t)) for t in range(start, start + 5)]


def _quix_window(samples: list[bytes], start: int, size: int = 5) -> dict[str, object]:
    values = [orjson.loads(s) for s in samples]
    acc = first_sample(values[0])
    for v in values[1:]:
        acc = add_sample(acc, v)
    return {"start": start * 1000, "end": (start + size) * 1000, "value": acc}


def _ours(samples: list[bytes], start: int) -> WindowAcc:
    events = [RawMetricEvent.model_validate_json(s) for s in samples]
    acc = WindowAcc.from_event(events[0], start, 5, 0)
    for offset, e in enumerate(events[1:], 1):
        acc.add(e, offset, e.timestamp.timestamp())
    return acc


def _same(quix: dict[str, object], ours: bytes) -> None:
    WindowAggregate.model_validate_json(orjson.dumps(quix))
    mine = orjson.loads(ours)
    del mine["emitted_at"], quix["emitted_at"]
    # Quix Streams has no quantile aggregator: the peer writes everything but the rollups'
    # percentiles and sketches (so it does less work per event than ours).
    for metric in ("cpu_usage", "memory_usage", "disk_usage"):
        for field in (*QUANTILES, "sketch"):
            mine[metric].pop(field, None)
    assert quix == mine


def test_a_5s_window_is_what_ours_writes_whatever_the_sample_order() -> None:
    host = SimulatedHost.create(7, 0, 3)
    samples = _samples(host, T0)
    random.Random(1).shuffle(samples)
    server = host.server_id.encode()
    quix = aggregate_message(_quix_window(samples, T0), server, "5s")
    _same(quix, _ours(samples, T0).to_json_bytes(BASE, "2026-12-02T00:00:00Z"))


def test_an_hour_cascaded_from_5s_windows_is_what_ours_writes() -> None:
    host = SimulatedHost.create(7, 1, 3)
    starts = [T0, T0 + 5, T0 + 10]
    windows = [_samples(host, s) for s in starts]
    quix = seed_rollup(_quix_window(windows[0], starts[0]))
    for samples, start in list(zip(windows, starts, strict=True))[1:]:
        quix = merge_rollup(quix, _quix_window(samples, start))
    ours = WindowAcc.seeded_by(_ours(windows[0], starts[0]), T0, 3600)
    for samples, start in list(zip(windows, starts, strict=True))[1:]:
        ours.absorb(_ours(samples, start))
    hour = {"start": T0 * 1000, "end": (T0 + 3600) * 1000, "value": quix}
    message = aggregate_message(hour, host.server_id.encode(), "1h")
    _same(message, ours.to_json_bytes(Resolution.ONE_HOUR, "2026-12-02T00:00:00Z"))


def test_event_time_reads_the_offset() -> None:
    assert event_ms({"timestamp": "2026-12-02T01:00:00+01:00"}) == event_ms(
        {"timestamp": "2026-12-02T00:00:00Z"}
    )
