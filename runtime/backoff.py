"""The one retry delay every FleetPulse loop uses: capped exponential growth with jitter, and a
wait that ends early when a cheap probe says the dependency is back.

    backoff = Backoff(settings.retry_min, settings.retry_max)
    while True:
        try:
            return await connect()
        except postgres.POSTGRES_ERRORS as exc:
            outage.failed(exc)
            await backoff.wait(probe=tcp_probe(host, port), stop=stopping)

Jitter (each delay drawn within ±`jitter` of its nominal value) keeps a fleet of clients that
lost the same broker from coming back in lockstep. The probe is why a service resumes within
about `probe_every` of its dependency's return instead of sleeping out a 30 s step.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

Probe = Callable[[], Awaitable[bool]]


class Backoff:
    """Delays `first`, `2·first`, `4·first` … up to `cap`, each scaled by a random factor in
    [1 - jitter, 1 + jitter] (never beyond `cap`). `reset()` after a success."""

    def __init__(
        self,
        first: float,
        cap: float,
        *,
        factor: float = 2.0,
        jitter: float = 0.2,
        probe_every: float = 0.5,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if first <= 0 or cap < first:
            raise ValueError(f"backoff needs 0 < first <= cap (got {first}, {cap})")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1) (got {jitter})")
        self.first, self.cap, self.factor, self.jitter = first, cap, factor, jitter
        self.probe_every = probe_every
        self._rng = rng
        self._nominal = first
        self.attempts = 0

    def next(self) -> float:
        """The next delay, s; the one after it is `factor` times longer, up to `cap`."""
        nominal = self._nominal
        self._nominal = min(nominal * self.factor, self.cap)
        self.attempts += 1
        spread = 1 + self.jitter * (2 * self._rng() - 1)
        return min(nominal * spread, self.cap)

    def reset(self) -> None:
        self._nominal = self.first
        self.attempts = 0

    async def wait(self, probe: Probe | None = None, stop: asyncio.Event | None = None) -> float:
        """Sleep the next delay; return early when `stop` is set or `probe()` answers True.

        The probe runs every `probe_every` s (jittered), first after one such interval, so a
        dependency that accepts connections but is not ready yet is not hammered. Returns the
        time slept, s.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.next()
        while True:
            now = loop.time()
            if now >= deadline:
                break
            step = deadline - now
            if probe is not None:
                step = min(step, self.probe_every * (0.75 + 0.5 * self._rng()))
            if stop is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), step)
                if stop.is_set():
                    break
            else:
                await asyncio.sleep(step)
            if probe is not None and loop.time() < deadline and await probe():
                break
        return loop.time() - started


def tcp_probe(addresses: list[tuple[str, int]], timeout: float = 1.0) -> Probe:
    """A probe that answers True when any of `addresses` accepts a TCP connection (closed at
    once, nothing sent: neither Kafka nor PostgreSQL logs such a connection)."""

    async def reachable(host: str, port: int) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def probe() -> bool:
        return any(await asyncio.gather(*(reachable(h, p) for h, p in addresses)))

    return probe


def parse_addresses(bootstrap: str) -> list[tuple[str, int]]:
    """The `(host, port)` pairs of a comma-separated `host:port` list."""
    pairs = []
    for item in bootstrap.split(","):
        host, _, port = item.strip().rpartition(":")
        pairs.append((host.strip("[]"), int(port)))
    return pairs
