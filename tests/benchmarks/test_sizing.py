"""The sizing guide: its formulas, and the README holding exactly what they print."""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks import sizing

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_holds_the_tables_the_script_prints() -> None:
    assert sizing.tables() in README.read_text()


def test_workers_and_sinks_follow_the_measured_rates_with_headroom() -> None:
    hosts = 100_000
    s = sizing.services(hosts)
    headroom = sizing.ASSUMPTIONS["headroom"].value
    assert s.workers == math.ceil(hosts * headroom / sizing.FIGURES["stream"].value)
    rows = hosts / 5 + hosts / 3600 + hosts / 86400
    assert s.sinks == math.ceil(rows * headroom / sizing.FIGURES["sink"].value)
    assert s.raw_partitions == max(6, 2 * s.workers)
    assert s.brokers >= 3


def test_compression_applies_only_to_chunks_past_the_policy() -> None:
    hosts = 1_000
    day = sizing.per_day(hosts)["5s"]
    plain, compressed = sizing.held(hosts)["5s"]
    ratio = sizing.ASSUMPTIONS["compression"].value
    assert plain == day * 30
    assert math.isclose(compressed, day * 7 + day * 23 / ratio)
    daily_plain, daily_compressed = sizing.held(hosts)["1d"]
    assert daily_plain == daily_compressed  # daily rows are not compressed


def test_sizes_are_decimal_with_three_digits() -> None:
    assert sizing.size(1_455.2) == "1.46 kB"
    assert sizing.size(25_140_000_000_000) == "25.1 TB"
