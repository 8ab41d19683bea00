"""Unit tests: from window aggregates to rows, one table layout per resolution."""

from __future__ import annotations

from datetime import timedelta

import orjson

from schemas import RESOLUTIONS, Resolution, WindowAggregate, decode_window_aggregate, sketch
from sinks.rows import TABLES, processes_json, table_of, to_row
from tests.factories import ROW_T0, SERVER_ID, aggregate


def test_every_resolution_has_its_table_keyed_by_server_and_time() -> None:
    for spec in RESOLUTIONS:
        table = TABLES[spec.name]
        assert table == table_of(spec) and table.name == spec.table
        assert table.key == ("server_id", spec.time_column)
        assert table.names[:2] == ["server_id", spec.time_column]


def test_a_5s_row_follows_its_columns() -> None:
    agg = aggregate(SERVER_ID, ROW_T0, cpu=12.0, mem=40.0, disk=70.0, rx=1000, tx=500)
    row = dict(zip(TABLES[Resolution.FIVE_SECONDS.value].names, to_row(agg), strict=True))
    assert row["server_id"] == SERVER_ID and row["timestamp"] == ROW_T0
    assert (row["cpu_usage"], row["cpu_usage_min"], row["cpu_usage_max"]) == (12.0, 11.0, 13.0)
    assert (row["sample_count"], row["network_rx"], row["network_tx"]) == (5, 1000, 500)
    assert row["processes"].startswith('[{"pid":1,"name":"init"')


def test_a_rollup_row_follows_its_columns() -> None:
    start = ROW_T0 - timedelta(minutes=ROW_T0.minute)
    agg = aggregate(SERVER_ID, start, Resolution.ONE_HOUR, count=3600, cpu=20.0)
    row = dict(zip(TABLES[Resolution.ONE_HOUR.value].names, to_row(agg), strict=True))
    assert row["bucket"] == start and row["sample_count"] == 3600
    assert (row["cpu_usage_avg"], row["cpu_usage_min"], row["cpu_usage_max"]) == (20.0, 19.0, 21.0)
    assert "processes" not in row


def test_a_rollup_row_holds_its_percentiles_and_its_sketch() -> None:
    start = ROW_T0 - timedelta(minutes=ROW_T0.minute)
    cpu = [float(i % 100) for i in range(3600)]
    agg = aggregate(SERVER_ID, start, Resolution.ONE_HOUR, samples={"cpu_usage": cpu})
    row = dict(zip(TABLES[Resolution.ONE_HOUR.value].names, to_row(agg), strict=True))
    assert row["sample_count"] == 3600
    assert row["cpu_usage_p50"] == agg.cpu_usage.p50 and row["cpu_usage_p99"] is not None
    assert abs(row["cpu_usage_p99"] - 98.0) <= 0.98
    keys, counts = row["cpu_usage_sketch_keys"], row["cpu_usage_sketch_counts"]
    assert sketch.from_arrays(keys, counts) == sketch.of(cpu)
    # A metric without a sketch (restored from older state) has NULLs, not zeros.
    assert row["memory_usage_p95"] is None and row["memory_usage_sketch_keys"] is None
    # The struct the sink decodes into gives the same row.
    assert to_row(decode_window_aggregate(agg.to_json_bytes())) == to_row(agg)


def test_a_decoded_struct_gives_the_row_of_its_model() -> None:
    agg = aggregate(SERVER_ID, ROW_T0, cpu=12.0, mem=40.0, disk=70.0, rx=1000, tx=500)
    fast = decode_window_aggregate(agg.to_json_bytes())
    assert not isinstance(fast, WindowAggregate)  # the msgspec struct of the fast path
    model_row, fast_row = to_row(agg), to_row(fast)
    assert fast_row[:-1] == model_row[:-1]
    assert orjson.loads(fast_row[-1]) == orjson.loads(model_row[-1])
    assert fast_row[-1] == model_row[-1]  # the same text, keys in the model's order


def test_no_processes_is_an_empty_list() -> None:
    assert processes_json(None) == processes_json([]) == "[]"
