"""Unit tests of the one backoff: growth to the cap within the jitter bounds, early wake-ups."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.backoff import Backoff, parse_addresses, tcp_probe


@given(
    first=st.floats(0.01, 5),
    ratio=st.floats(1, 200),
    jitter=st.floats(0, 0.9),
    draws=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=40),
)
def test_delays_grow_to_the_cap_within_the_jitter(
    first: float, ratio: float, jitter: float, draws: list[float]
) -> None:
    cap = first * ratio
    it = iter(draws)
    backoff = Backoff(first, cap, jitter=jitter, rng=lambda: next(it))
    nominal = first
    for _ in draws:
        delay = backoff.next()
        assert nominal * (1 - jitter) - 1e-9 <= delay <= min(nominal * (1 + jitter), cap) + 1e-9
        nominal = min(nominal * 2, cap)


def test_reaches_the_cap_and_stays_there() -> None:
    backoff = Backoff(0.5, 30, jitter=0, rng=lambda: 0.5)
    assert [backoff.next() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    backoff.reset()
    assert backoff.next() == 0.5 and backoff.attempts == 1


def test_jitter_spreads_the_delays() -> None:
    delays = {Backoff(1, 10).next() for _ in range(50)}
    assert len(delays) > 40 and all(0.8 <= d <= 1.2 for d in delays)


@pytest.mark.parametrize(("first", "cap", "jitter"), [(0, 1, 0.1), (2, 1, 0.1), (1, 2, 1.0)])
def test_rejects_nonsense(first: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError, match=r"backoff|jitter"):
        Backoff(first, cap, jitter=jitter)


async def test_wait_ends_when_the_probe_says_the_dependency_is_back() -> None:
    answers = iter([False, False, True])

    async def probe() -> bool:
        return next(answers)

    backoff = Backoff(30, 30, jitter=0, probe_every=0.05)
    started = time.monotonic()
    slept = await backoff.wait(probe)
    assert 0.1 <= slept < 1 and time.monotonic() - started < 1


async def test_wait_ends_on_stop() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, stop.set)
    assert await Backoff(30, 30).wait(stop=stop) < 1


async def test_wait_sleeps_the_delay_without_a_probe() -> None:
    slept = await Backoff(0.2, 0.2, jitter=0).wait()
    assert 0.19 <= slept < 0.5


async def test_tcp_probe_against_a_real_listener() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert await tcp_probe([("127.0.0.1", 1), ("127.0.0.1", port)])()
    assert not await tcp_probe([("127.0.0.1", port)])()


def test_parse_addresses() -> None:
    assert parse_addresses("a:1, b:2,[::1]:3") == [("a", 1), ("b", 2), ("::1", 3)]
