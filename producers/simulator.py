"""`fleetpulse simulate`: N hosts at 1 Hz with realistic, reproducible series.

Every value is a pure function of (seed, host, second): a daily cycle, slower waves, noise and
rare spikes for CPU; a slow wave for memory; disk filling over a week; bursty network traffic.
The same seed gives the same fleet and the same series, whatever ticks a run skips.
Events are built straight into JSON (the generator keeps every field in range, which the
tests check against the schema) and sent through the producer library's fast path.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from producers.agent.sampling import next_tick
from producers.client import MetricProducer
from producers.settings import SimulatorSettings
from runtime.service import Service

log = logging.getLogger(__name__)

_M64 = (1 << 64) - 1
_TWO_PI = 2 * math.pi
_DAY = 86_400
_WEEK = 7 * _DAY
_NAMESPACE = uuid.UUID("0b6f6d8e-2f55-4c59-9a1c-6a8f3f4e7c21")
_PROCESS_NAMES = (
    "postgres", "nginx", "java", "python3", "node", "redis-server", "sshd", "systemd",
    "containerd", "kubelet", "dockerd", "haproxy", "mysqld", "envoy", "prometheus",
)  # fmt: skip
_SLICE = 2000  # hosts generated between yields to the sender task


def _mix(x: int) -> int:
    """splitmix64: a fast, well-distributed 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _unit(key: int) -> float:
    """A uniform number in [0, 1) determined by `key`."""
    return _mix(key) / 18446744073709551616.0


def simulated_server_id(seed: int, index: int) -> str:
    """The server id of simulated host `index` for `seed` (stable across runs)."""
    return str(uuid.uuid5(_NAMESPACE, f"{seed}:{index}"))


def _clamp(v: float) -> float:
    return 0.0 if v < 0.0 else 100.0 if v > 100.0 else v


@dataclass(frozen=True, slots=True)
class SimulatedHost:
    index: int
    server_id: str
    key: int
    cpu_base: float
    cpu_daily: float
    phase: float
    wave_period: float
    noise: float
    mem_base: float
    disk_base: float
    net_rate: float
    processes: tuple[tuple[int, str], ...]

    @classmethod
    def create(cls, seed: int, index: int, n_processes: int) -> SimulatedHost:
        key = _mix(seed * 0x100000001B3 + index)

        def u(k: int) -> float:
            return _unit(key + k)

        procs = tuple(
            (100 + int(u(20 + j) * 60000), _PROCESS_NAMES[int(u(40 + j) * len(_PROCESS_NAMES))])
            for j in range(n_processes)
        )
        return cls(
            index=index,
            server_id=simulated_server_id(seed, index),
            key=key,
            cpu_base=5 + 45 * u(1),
            cpu_daily=5 + 20 * u(2),
            phase=_TWO_PI * u(3),
            wave_period=300 + 1500 * u(4),
            noise=2 + 10 * u(5),
            mem_base=20 + 55 * u(6),
            disk_base=15 + 65 * u(7),
            net_rate=2_000 + 5_000_000 * u(8) ** 3,
            processes=procs,
        )

    def values(self, t: int) -> tuple[float, float, float, int, int]:
        """cpu %, memory %, disk %, bytes received, bytes sent during second `t`."""
        r = _mix(self.key ^ (t * 0x9E3779B97F4A7C15 & _M64))
        # Three independent uniforms from one 64-bit hash (21 bits each).
        r1 = (r & 0x1FFFFF) / 2097152.0
        r2 = ((r >> 21) & 0x1FFFFF) / 2097152.0
        r3 = (r >> 43) / 2097152.0
        day = math.sin(_TWO_PI * t / _DAY + self.phase)
        wave = math.sin(_TWO_PI * t / self.wave_period + self.phase)
        cpu = self.cpu_base + self.cpu_daily * day + 8 * wave + self.noise * (2 * r1 - 1)
        if r2 < 0.002:  # a rare spike: a job, a deploy
            cpu += 50
        mem = self.mem_base + 6 * math.sin(_TWO_PI * t / 3600 + self.phase) + (r2 - 0.5)
        disk = self.disk_base + 8 * ((t + self.index * 977) % _WEEK) / _WEEK
        burst = 6.0 if r3 > 0.995 else 1.0
        rate = self.net_rate * (1.2 + day) * (0.5 + r3) * burst
        return _clamp(cpu), _clamp(mem), _clamp(disk), int(rate), int(rate * (0.3 + r1))

    @property
    def template(self) -> str:
        """The event's JSON with %-placeholders for the timestamp and the values."""
        procs = ",".join(
            f'{{"pid":{pid},"name":"{name}","cpu_usage":%.2f,"memory_usage":%.2f}}'
            for pid, name in self.processes
        )
        return (
            f'{{"server_id":"{self.server_id}","timestamp":"%s","cpu_usage":%.2f,'
            f'"memory_usage":%.2f,"disk_usage":%.2f,"network_rx":%d,"network_tx":%d,'
            f'"processes":[{procs}]}}'
        )

    def event_json(self, t: int, timestamp: str, template: str | None = None) -> bytes:
        cpu, mem, disk, rx, tx = self.values(t)
        args: list[object] = [timestamp, cpu, mem, disk, rx, tx]
        share_cpu, share_mem = cpu, mem
        for _ in self.processes:  # each listed process takes a part of the host's use
            share_cpu *= 0.5
            share_mem *= 0.4
            args += (share_cpu, share_mem)
        return ((template or self.template) % tuple(args)).encode()


def fleet(seed: int, hosts: int, n_processes: int) -> list[SimulatedHost]:
    return [SimulatedHost.create(seed, i, n_processes) for i in range(hosts)]


def iso_second(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tick_events(hosts: list[SimulatedHost], t: int) -> Iterator[tuple[str, bytes]]:
    """(server_id, JSON) of every host for second `t`."""
    ts = iso_second(t)
    for h in hosts:
        yield h.server_id, h.event_json(t, ts, h.template)


@dataclass
class SimulatorStats:
    ticks: int = 0
    events: int = 0
    ticks_late: int = 0
    ticks_skipped: int = 0


class Simulator(Service):
    """Emits one event per host per second until stopped (or `duration` seconds)."""

    name = "simulator"

    def __init__(
        self,
        settings: SimulatorSettings,
        producer: MetricProducer | None = None,
        duration: float | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.duration = duration
        self.hosts = fleet(settings.seed, settings.hosts, settings.sim_processes)
        self._templates = [h.template for h in self.hosts]
        self._silence: tuple[int, int, int] | None = None  # host index, from and to second
        self.producer = producer or MetricProducer(settings, component=self.name)
        self.stats = SimulatorStats()

    async def _wait_until(self, wall: float) -> bool:
        """Sleep until wall-clock `wall`; True if stopped meanwhile."""
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=max(0.0, wall - time.time()))
            return True
        except TimeoutError:
            return False

    async def start(self) -> None:
        await self.producer.start()

    async def run(self) -> None:
        """Emit until stopped or `duration` has passed (then the service stops itself)."""
        await self.emit(self.duration)
        self.stop()

    async def close(self) -> None:
        await self.producer.stop()
        stats, p = self.stats, self.producer.stats
        log.info(
            "simulator stopped: %d seconds, %d events, %d late seconds, %d skipped; "
            "%d sent, %d dropped, %d undelivered",
            stats.ticks,
            stats.events,
            stats.ticks_late,
            stats.ticks_skipped,
            p.sent,
            p.dropped,
            # Still buffered when the stop's flush ran out of time: never sent.
            max(0, p.accepted - p.sent - p.dropped),
        )

    async def emit(self, duration: float | None = None) -> SimulatorStats:
        """Emit for `duration` seconds (None: until stopped); the producer must be started."""
        s = self.settings
        if s.sim_start is not None:
            return await self._time_lapse(int(s.sim_start.timestamp()), s.sim_speed, duration)
        end = None if duration is None else time.time() + duration
        tick = int(next_tick(time.time()))
        last_report = time.monotonic()
        reported_events = 0
        log.info("simulating %d hosts (seed %d) to %s", s.hosts, s.seed, s.kafka_bootstrap)
        while not await self._wait_until(tick):
            if end is not None and tick >= end:
                break
            lag = time.time() - tick
            if lag > s.max_lag:
                skip = int(lag)
                self.stats.ticks_skipped += skip
                log.warning("%.1f s behind the clock: skipping %d seconds of data", lag, skip)
                tick += skip
            await self._emit(tick)
            done = time.time() - tick
            if done > 1.0:
                self.stats.ticks_late += 1
                log.warning("falling behind: second %s took until +%.2f s", iso_second(tick), done)
            tick += 1
            if time.monotonic() - last_report >= 10:
                rate = (self.stats.events - reported_events) / (time.monotonic() - last_report)
                log.info(
                    "%.0f events/s, %d sent, %d buffered, %d dropped",
                    rate,
                    self.producer.stats.sent,
                    self.producer.stats.buffered,
                    self.producer.stats.dropped,
                )
                last_report, reported_events = time.monotonic(), self.stats.events
        return self.stats

    async def _time_lapse(self, t0: int, speed: float, seconds: float | None) -> SimulatorStats:
        """Every simulated second from `t0` on, in order, `speed` of them per wall-clock
        second, until `seconds` of them are out or the service stops: the same run gives the
        same events, whatever happens to the pipeline meanwhile."""
        log.info(
            "simulating %d hosts (seed %d) from %s at %gx to %s",
            self.settings.hosts, self.settings.seed, iso_second(t0), speed,
            self.settings.kafka_bootstrap,
        )  # fmt: skip
        wall0 = time.time()
        k = 0
        room = max(0, self.settings.buffer_size - len(self.hosts))
        while seconds is None or k < seconds:
            if await self._wait_until(wall0 + k / speed):
                break
            # A history replayed is never cut: the next second waits for room in the buffer
            # (at a speed the broker cannot take, the broker sets the pace).
            while self.producer.stats.buffered > room:
                if await self._wait_until(time.time() + 0.05):
                    return self.stats
            await self._emit(t0 + k)
            k += 1
            if k % max(1, int(10 * speed)) == 0:
                log.info(
                    "time-lapse at %s: %d events, %d sent, %d buffered",
                    iso_second(t0 + k), self.stats.events, self.producer.stats.sent,
                    self.producer.stats.buffered,
                )  # fmt: skip
        return self.stats

    def _silent(self, t: int) -> int | None:
        """The index of the host silent at second `t`, if any (counted from the first)."""
        s = self.settings
        if s.sim_silent_host is None or s.sim_silent_host >= len(self.hosts):
            return None
        if self._silence is None:
            begin = t + int(s.sim_silent_after)
            self._silence = (s.sim_silent_host, begin, begin + int(s.sim_silent_for))
            log.info(
                "host %d (%s) goes silent from %s to %s",
                s.sim_silent_host, self.hosts[s.sim_silent_host].server_id,
                iso_second(begin), iso_second(begin + int(s.sim_silent_for)),
            )  # fmt: skip
        index, begin, end = self._silence
        return index if begin <= t < end else None

    async def _emit(self, t: int) -> None:
        ts = iso_second(t)
        send = self.producer.send_encoded
        hosts, templates = self.hosts, self._templates
        silent = self._silent(t)
        for start in range(0, len(hosts), _SLICE):
            for i in range(start, min(start + _SLICE, len(hosts))):
                if i == silent:
                    continue
                h = hosts[i]
                send(h.server_id, h.event_json(t, ts, templates[i]))
            await asyncio.sleep(0)  # let the sender hand this slice to Kafka
        self.stats.ticks += 1
        self.stats.events += len(self.hosts) - (silent is not None)
