"""Mergeable quantile sketches with a guaranteed relative error (DDSketch's logarithmic mapping).

A value x > 0 falls in bucket k = ceil(log_gamma x), the bucket (gamma^(k-1), gamma^k], with
gamma = (1 + alpha) / (1 - alpha); the bucket is represented by 2 gamma^k / (gamma + 1), which
is within a relative error alpha of every value in it. Zero (and anything below the smallest
normal float) has a bucket of its own, `ZERO_KEY`, represented by 0. A sketch is the count of
samples per bucket, so:
- merging sketches is adding their counts, and the merge of the 5 s windows' sketches is the
  sketch of their samples, exactly (no order, no rounding);
- a quantile q is the representative of the bucket holding the sample of rank floor(q(n - 1)) in
  sorted order, so it is within alpha of that sample's value (the lower q-quantile), whatever the
  series: constant, bimodal, zeros, 100 % plateaus;
- the stored form is two integer arrays, bucket keys and counts, that PostgreSQL merges with
  `unnest … GROUP BY key` and ranks with a window sum (`sinks/read.py`), with no extension.

Bounded: percentages in 0..100 at alpha = 1 % use at most about 35,700 keys in theory (from the
smallest float to 100) and a few hundred in practice (one per 2 % step of value).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Final

#: Relative accuracy alpha: every quantile is within alpha of the exact one (relative to its value).
RELATIVE_ACCURACY: Final = 0.01
GAMMA: Final = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
MULTIPLIER: Final = 1 / math.log(GAMMA)
#: Values below this (0 %, and the subnormal floats) are counted in `ZERO_KEY`, represented by
#: 0: the guarantee is relative for every value from here up, absolute (below it) under it.
MIN_INDEXABLE: Final = 2.2250738585072014e-308  # sys.float_info.min, the smallest normal
#: The zero bucket's key: below every other key (the smallest is about -35,400).
ZERO_KEY: Final = -(2**31)
#: The quantiles the rollups carry, by field name.
QUANTILES: Final = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}


def key(value: float) -> int:
    """The bucket of `value` (>= 0)."""
    if value < MIN_INDEXABLE:
        return ZERO_KEY
    return math.ceil(math.log(value) * MULTIPLIER)


def representative(k: int) -> float:
    """The value that stands for bucket `k`: within alpha of every value in it."""
    if k == ZERO_KEY:
        return 0.0
    return 2 * math.exp(k / MULTIPLIER) / (GAMMA + 1)


def add(counts: dict[int, int], value: float) -> None:
    """Count `value` in `counts` (a sketch as a dict: bucket → samples)."""
    k = ZERO_KEY if value < MIN_INDEXABLE else math.ceil(math.log(value) * MULTIPLIER)
    counts[k] = counts.get(k, 0) + 1


def merge(into: dict[int, int], other: Mapping[int, int]) -> None:
    """Add the counts of `other` to `into`."""
    get = into.get
    for k, n in other.items():
        into[k] = get(k, 0) + n


def of(values: Iterable[float]) -> dict[int, int]:
    """The sketch of `values`."""
    counts: dict[int, int] = {}
    for v in values:
        add(counts, v)
    return counts


def quantiles(
    counts: Mapping[int, int], qs: Iterable[float], lo: float | None = None, hi: float | None = None
) -> list[float | None]:
    """The `qs` quantiles (0..1) of a sketch, each the representative of the bucket of the
    sample of rank floor(q(n - 1)), clamped to [`lo`, `hi`] when the exact extremes are known
    (still within alpha: the exact quantile lies between them). None for an empty sketch."""
    wanted = list(qs)
    n = sum(counts.values())
    if n == 0:
        return [None for _ in wanted]
    keys = sorted(counts)
    out: list[float | None] = []
    for q in wanted:
        if not 0 <= q <= 1:
            raise ValueError(f"a quantile is between 0 and 1, not {q}")
        rank = math.floor(q * (n - 1))
        seen = 0
        for k in keys:
            seen += counts[k]
            if seen > rank:
                v = representative(k)
                if lo is not None and v < lo:
                    v = lo
                if hi is not None and v > hi:
                    v = hi
                out.append(v)
                break
    return out


def to_arrays(counts: Mapping[int, int]) -> tuple[list[int], list[int]]:
    """The stored form: keys ascending, and their counts."""
    keys = sorted(counts)
    return keys, [counts[k] for k in keys]


def from_arrays(keys: Iterable[int], counts: Iterable[int]) -> dict[int, int]:
    """A sketch from its stored form (repeated keys add up)."""
    out: dict[int, int] = {}
    for k, n in zip(keys, counts, strict=True):
        out[k] = out.get(k, 0) + n
    return out
