"""The sampling math of the host agent, as pure functions over readings.

Kept free of I/O so it is tested with readings fed in: counter deltas with resets and
wrap-around, wall-clock alignment, and top-N selection of processes by CPU.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: Counter widths a kernel may wrap at; a decrease that fits one of these is a wrap, not a reset.
_WRAP_WIDTHS = (2**32, 2**64)
#: A wrap is believed only if the counter was in the top part of its range before wrapping.
_WRAP_HEADROOM = 0.75


def counter_delta(previous: int | None, current: int) -> int:
    """Bytes counted between two readings of a monotonic counter.

    The first reading (`previous` is None) gives 0, not the counter's total. A decrease is a
    wrap-around when the previous value was near a 32- or 64-bit limit (the delta then spans
    the wrap), otherwise a reset (interface re-created, driver reloaded), which gives 0 rather
    than a spike.
    """
    if previous is None:
        return 0
    if current >= previous:
        return current - previous
    for width in _WRAP_WIDTHS:
        if _WRAP_HEADROOM * width <= previous < width:
            return width - previous + current
    return 0


@dataclass(frozen=True, slots=True)
class NetTotals:
    rx: int
    tx: int


class NetworkDeltas:
    """Per-interface byte counters → bytes received / sent since the previous reading."""

    def __init__(self) -> None:
        self._previous: dict[str, tuple[int, int]] = {}

    def update(self, readings: Mapping[str, tuple[int, int]]) -> NetTotals:
        """`readings` maps an interface name to its (bytes_recv, bytes_sent) counters.

        An interface seen for the first time contributes 0 (its baseline); one that vanished
        is forgotten.
        """
        rx = tx = 0
        for nic, (recv, sent) in readings.items():
            prev = self._previous.get(nic)
            rx += counter_delta(prev[0] if prev else None, recv)
            tx += counter_delta(prev[1] if prev else None, sent)
        self._previous = dict(readings)
        return NetTotals(rx, tx)


def next_tick(now: float, interval: float = 1.0) -> float:
    """The next wall-clock instant aligned to `interval` strictly after `now`."""
    return (math.floor(now / interval) + 1) * interval


@dataclass(frozen=True, slots=True)
class ProcessCpu:
    """CPU time a process used during the last interval, and its identity."""

    pid: int
    cpu_ns: int


def cpu_deltas(previous: Mapping[int, int], current: Mapping[int, int]) -> list[ProcessCpu]:
    """Per-process CPU nanoseconds used between two readings of cumulative CPU time.

    A pid seen for the first time (or whose counter went backwards: the pid was reused) is
    left out of this interval, because its cumulative time includes work done before it.
    """
    out = []
    for pid, now_ns in current.items():
        before = previous.get(pid)
        if before is None or now_ns < before:
            continue
        out.append(ProcessCpu(pid, now_ns - before))
    return out


def top_n(deltas: Iterable[ProcessCpu], n: int) -> list[ProcessCpu]:
    """The `n` processes that used the most CPU, busiest first (ties by lower pid)."""
    return heapq.nsmallest(n, deltas, key=lambda p: (-p.cpu_ns, p.pid))


def busiest(previous: Mapping[int, int], current: Mapping[int, int], n: int) -> list[ProcessCpu]:
    """`top_n(cpu_deltas(previous, current), n)` in one pass, without an object per process:
    the agent runs it every second over every process on the host."""
    get = previous.get
    # (minus the delta, pid): the smallest first is the busiest, ties by lower pid.
    ranked = heapq.nsmallest(
        n,
        (
            (before - now_ns, pid)
            for pid, now_ns in current.items()
            if (before := get(pid)) is not None and now_ns >= before
        ),
    )
    return [ProcessCpu(pid, -negative) for negative, pid in ranked]


def cpu_percent(cpu_ns: int, elapsed_s: float) -> float:
    """CPU use in percent of one core over `elapsed_s` seconds."""
    if elapsed_s <= 0:
        return 0.0
    return round(cpu_ns / (elapsed_s * 1e9) * 100.0, 2)
