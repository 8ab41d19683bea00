"""Reads this host's metrics with psutil, cheaply enough to run every second.

Per-process CPU is the expensive part: psutil builds a `Process` and parses
`/proc/<pid>/stat` for each process (about 46 ms of CPU per sample with 570 processes on the
development machine). On Linux the agent reads only `/proc/<pid>/schedstat`, one short line
holding the task's cumulative CPU time in nanoseconds, and asks psutil for names and memory of
the top N alone (about 3 ms for the same 570 processes; see BENCHMARKS.md). Elsewhere it uses
psutil's `process_iter` with an attribute list.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import psutil

from producers.agent.sampling import NetworkDeltas, cpu_deltas, cpu_percent, top_n
from schemas import ProcessInfo, RawMetricEvent

_PROC = Path("/proc")
_LOOPBACK_PREFIXES = ("lo",)


def _schedstat_available() -> bool:
    return (_PROC / "self" / "schedstat").exists()


def read_cpu_ns_schedstat() -> dict[int, int]:
    """pid → cumulative CPU nanoseconds, from /proc/<pid>/schedstat (Linux)."""
    out: dict[int, int] = {}
    for name in os.listdir(_PROC):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{name}/schedstat", os.O_RDONLY)
        except OSError:
            continue  # the process exited between listdir and open
        try:
            data = os.read(fd, 96)
        except OSError:
            continue
        finally:
            os.close(fd)
        head = data.split(None, 1)
        if head:
            out[int(name)] = int(head[0])
    return out


def read_cpu_ns_psutil() -> dict[int, int]:
    """pid → cumulative CPU nanoseconds (user + system), through psutil (any platform)."""
    out: dict[int, int] = {}
    for proc in psutil.process_iter(["cpu_times"]):
        times = proc.info["cpu_times"]
        if times is not None:
            out[proc.pid] = int((times.user + times.system) * 1e9)
    return out


class HostSampler:
    """Takes one `RawMetricEvent` per call; the first call primes the deltas."""

    def __init__(self, *, disk_mount: str = "/", top_processes: int = 10) -> None:
        self.disk_mount = disk_mount
        self.top_processes = top_processes
        self._read_cpu_ns = read_cpu_ns_schedstat if _schedstat_available() else read_cpu_ns_psutil
        self._net = NetworkDeltas()
        self._proc_prev: dict[int, int] = {}
        self._prev_time = time.monotonic()
        psutil.disk_usage(disk_mount)  # fails early, with the path, if the mount is wrong
        self._prime()

    def _prime(self) -> None:
        psutil.cpu_percent(interval=None)
        self._net.update(self._net_readings())
        if self.top_processes:
            self._proc_prev = self._read_cpu_ns()
        self._prev_time = time.monotonic()

    @staticmethod
    def _net_readings() -> dict[str, tuple[int, int]]:
        counters = psutil.net_io_counters(pernic=True, nowrap=True)
        return {
            nic: (c.bytes_recv, c.bytes_sent)
            for nic, c in counters.items()
            if not nic.startswith(_LOOPBACK_PREFIXES)
        }

    def _processes(self, elapsed: float) -> list[ProcessInfo]:
        if not self.top_processes:
            return []
        current = self._read_cpu_ns()
        busiest = top_n(cpu_deltas(self._proc_prev, current), self.top_processes)
        self._proc_prev = current
        out = []
        for p in busiest:
            try:
                proc = psutil.Process(p.pid)
                with proc.oneshot():
                    name = proc.name()
                    mem = proc.memory_percent()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            out.append(
                ProcessInfo(
                    pid=p.pid,
                    name=name[:256],
                    cpu_usage=min(cpu_percent(p.cpu_ns, elapsed), 100.0 * 4096),
                    memory_usage=min(round(mem, 2), 100.0),
                )
            )
        return out

    def sample(self, server_id: str, timestamp: datetime) -> RawMetricEvent:
        now = time.monotonic()
        elapsed = now - self._prev_time
        self._prev_time = now
        net = self._net.update(self._net_readings())
        return RawMetricEvent(
            server_id=server_id,
            timestamp=timestamp,
            cpu_usage=min(psutil.cpu_percent(interval=None), 100.0),
            memory_usage=psutil.virtual_memory().percent,
            disk_usage=psutil.disk_usage(self.disk_mount).percent,
            network_rx=net.rx,
            network_tx=net.tx,
            processes=self._processes(elapsed),
        )
