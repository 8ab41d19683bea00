"""The quantile sketch: within alpha of the exact quantile on any series, and merges exactly."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import sketch
from schemas.sketch import QUANTILES, RELATIVE_ACCURACY

#: alpha, and a float rounding's worth over it (a value on a bucket's edge).
TOLERANCE = RELATIVE_ACCURACY * (1 + 1e-9)
PERCENT = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)


def exact(values: list[float], q: float) -> float:
    """The lower q-quantile: the sample of rank floor(q(n - 1))."""
    return sorted(values)[math.floor(q * (len(values) - 1))]


def assert_within_alpha(values: list[float]) -> None:
    counts = sketch.of(values)
    qs = [*QUANTILES.values(), 0.0, 0.25, 1.0]
    for q, got in zip(qs, sketch.quantiles(counts, qs, min(values), max(values)), strict=True):
        want = exact(values, q)
        assert got is not None
        assert abs(got - want) <= max(TOLERANCE * want, sketch.MIN_INDEXABLE), (q, got, want)


def series(seed: int) -> dict[str, list[float]]:
    rnd = random.Random(seed)
    n = 3600
    return {
        "uniform": [rnd.uniform(0, 100) for _ in range(n)],
        "lognormal": [min(100.0, rnd.lognormvariate(1, 1.5)) for _ in range(n)],
        "constant": [42.5] * n,
        "bimodal": [rnd.gauss(5, 1) if rnd.random() < 0.7 else rnd.gauss(95, 2) for _ in range(n)],
        "zeros": [0.0] * n,
        "mostly_zeros": [0.0 if rnd.random() < 0.96 else rnd.uniform(0, 100) for _ in range(n)],
        "plateau_100": [100.0] * (n // 2) + [rnd.uniform(0, 100) for _ in range(n // 2)],
        "pinned_core": [100.0 if 600 <= i < 900 else rnd.uniform(1, 5) for i in range(n)],
        "tiny": [rnd.uniform(0, 1e-200) for _ in range(n)],
        "steps": [float(i % 101) for i in range(n)],
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(
    "name",
    [
        "uniform",
        "lognormal",
        "constant",
        "bimodal",
        "zeros",
        "mostly_zeros",
        "plateau_100",
        "pinned_core",
        "tiny",
        "steps",
    ],
)
def test_every_quantile_is_within_alpha_on_seeded_and_adversarial_series(
    seed: int, name: str
) -> None:
    values = [max(0.0, min(100.0, v)) for v in series(seed)[name]]
    assert_within_alpha(values)


def test_a_pinned_core_shows_in_the_p99_where_the_average_hides_it() -> None:
    values = series(7)["pinned_core"]  # one core at 100 % for 5 minutes of an hour
    p50, _p90, p95, p99 = sketch.quantiles(sketch.of(values), QUANTILES.values())
    assert sum(values) / len(values) < 12
    assert p50 is not None and p50 < 5.1
    assert p95 is not None and p95 >= 99 and p99 is not None and p99 >= 99


@settings(max_examples=300, deadline=None)
@given(st.lists(PERCENT, min_size=1, max_size=400))
def test_within_alpha_on_any_series(values: list[float]) -> None:
    assert_within_alpha(values)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(PERCENT, min_size=1, max_size=5), min_size=1, max_size=60))
def test_a_cascaded_sketch_equals_the_sketch_of_the_raw_samples(
    windows: list[list[float]],
) -> None:
    # 5 s windows' sketches merged into hourly ones (12 windows an "hour" here), hourly into a
    # daily one: the same buckets and counts as sketching every sample once.
    raw = [v for w in windows for v in w]
    fives = [sketch.of(w) for w in windows]
    hours = []
    for i in range(0, len(fives), 12):
        hour: dict[int, int] = {}
        for f in fives[i : i + 12]:
            sketch.merge(hour, f)
        hours.append(hour)
    day: dict[int, int] = {}
    for h in hours:
        sketch.merge(day, h)
    assert day == sketch.of(raw)
    assert sketch.quantiles(day, QUANTILES.values()) == sketch.quantiles(
        sketch.of(raw), QUANTILES.values()
    )


@given(st.lists(PERCENT, max_size=50))
def test_the_stored_form_round_trips(values: list[float]) -> None:
    counts = sketch.of(values)
    keys, ns = sketch.to_arrays(counts)
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert sketch.from_arrays(keys, ns) == counts
    assert sum(ns) == len(values)


def test_zero_and_the_extremes_have_their_buckets() -> None:
    assert sketch.key(0.0) == sketch.ZERO_KEY and sketch.representative(sketch.ZERO_KEY) == 0.0
    assert sketch.key(sketch.MIN_INDEXABLE / 4) == sketch.ZERO_KEY  # subnormal: counted as 0
    smallest = sketch.key(sketch.MIN_INDEXABLE)
    assert sketch.ZERO_KEY < smallest < -35_000
    assert sketch.key(100.0) < 300
    for v in (sketch.MIN_INDEXABLE, 1e-300, 1e-3, 0.5, 1.0, 33.3, 99.99, 100.0):
        r = sketch.representative(sketch.key(v))
        assert abs(r - v) <= TOLERANCE * v


def test_an_empty_sketch_has_no_quantiles_and_a_bad_q_is_refused() -> None:
    assert sketch.quantiles({}, [0.5, 0.99]) == [None, None]
    with pytest.raises(ValueError, match="between 0 and 1"):
        sketch.quantiles({0: 1}, [1.5])
