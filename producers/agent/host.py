"""Reads this host's metrics with psutil, cheaply enough to run every second.

Per-process CPU is the expensive part: psutil builds a `Process` and parses
`/proc/<pid>/stat` for each process (about 46 ms of CPU per sample with 570 processes on the
development machine). On Linux the agent reads only `/proc/<pid>/schedstat`, one short line
holding the task's cumulative CPU time in nanoseconds, and asks psutil for names and memory of
the top N alone (about 3 ms for the same 570 processes; see BENCHMARKS.md). It keeps each
schedstat file open between samples and re-reads it with one `pread` (the kernel regenerates the
line at offset 0), which halves that again: opening and closing a /proc file cost more than
reading it. Elsewhere it uses psutil's `process_iter` with an attribute list.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psutil

from producers.agent.sampling import NetworkDeltas, busiest, cpu_percent
from schemas import ProcessInfo, RawMetricEvent

_PROC = Path("/proc")
_LOOPBACK_PREFIXES = ("lo",)
#: Descriptors `SchedstatReader` leaves to the rest of the agent (it uses a few dozen).
_FDS_KEPT_FREE = 256
#: Files `SchedstatReader` keeps open when the descriptors are unlimited.
_MAX_OPEN = 65536


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


class SchedstatReader:
    """`read_cpu_ns_schedstat` that keeps the files open: pid → cumulative CPU nanoseconds.

    A file is opened once per process and re-read with `pread` at every call; the file of a
    process that exited fails to read (ESRCH) and is closed, so a pid reused by a new process
    gets a file of its own. Each open file costs the kernel about a page (its read buffer),
    not this process's memory. At most `max_open` stay open (by default the process's soft
    limit of descriptors less `_FDS_KEPT_FREE` for Kafka's sockets, the spool and the metrics
    endpoint); past that, files are opened and closed at every call, as
    `read_cpu_ns_schedstat` does.
    """

    def __init__(self, max_open: int | None = None) -> None:
        if max_open is None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            max_open = _MAX_OPEN if soft == resource.RLIM_INFINITY else soft - _FDS_KEPT_FREE
        self.max_open = max_open
        self._fds: dict[int, int] = {}

    def __call__(self) -> dict[int, int]:
        fds = self._fds
        out: dict[int, int] = {}
        held = 0  # files kept open that were read this time
        for name in os.listdir(_PROC):
            if not name.isdigit():
                continue
            pid = int(name)
            fd = fds.get(pid)
            keep = True
            if fd is None:
                try:
                    fd = os.open(f"/proc/{name}/schedstat", os.O_RDONLY)
                except OSError:
                    continue  # the process exited between listdir and open
                keep = len(fds) < self.max_open
                if keep:
                    fds[pid] = fd
            try:
                data = os.pread(fd, 96, 0)
            except OSError:  # exited (or its pid is another process's now)
                data = b""
                keep = False
                fds.pop(pid, None)
            if keep:
                held += 1
            else:
                os.close(fd)
            head = data.split(None, 1)
            if head:
                out[pid] = int(head[0])
        if len(fds) > held:  # the files of processes that are gone
            for pid in [p for p in fds if p not in out]:
                os.close(fds.pop(pid))
        return out

    def close(self) -> None:
        """Close every file held open."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


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
        self._schedstat = SchedstatReader() if _schedstat_available() else None
        self._read_cpu_ns: Callable[[], dict[int, int]] = self._schedstat or read_cpu_ns_psutil
        self._net = NetworkDeltas()
        self._proc_prev: dict[int, int] = {}
        self._top: dict[int, psutil.Process] = {}
        self._prev_time = time.monotonic()
        psutil.disk_usage(disk_mount)  # fails early, with the path, if the mount is wrong
        self._prime()

    def close(self) -> None:
        """Release the files kept open between samples (the sampler is not used after)."""
        if self._schedstat is not None:
            self._schedstat.close()

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
        top = busiest(self._proc_prev, current, self.top_processes)
        self._proc_prev = current
        out = []
        # The busiest processes change little from one second to the next: their `Process`
        # objects are kept (making one reads /proc/<pid>/stat for its start time). A kept
        # one whose pid was reused reads the new process, as a new object would.
        kept, self._top = self._top, {}
        for p in top:
            try:
                proc = kept.get(p.pid) or psutil.Process(p.pid)
                self._top[p.pid] = proc
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
