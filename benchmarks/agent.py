"""Agent cost: CPU per sample and resident memory with 500 idle processes on the host.

Compares, in one run on the same process table, three ways to find the top processes:
psutil's `process_iter` with name/cpu_percent/memory_percent for every process (the
straightforward loop over cached `Process` objects), psutil's `process_iter(["cpu_times"])`,
and the agent's `/proc/<pid>/schedstat` reader; then runs the real `fleetpulse agent` against
the local stack and measures its CPU and memory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import psutil

from benchmarks.common import idle_processes, kill_all, median, row, stack_up
from producers.agent import host
from producers.agent.host import HostSampler

ROUNDS = 5
SAMPLES = 20
IDLE = 500


def _naive_top10() -> None:
    procs = [
        (p.info["cpu_percent"] or 0.0, p.pid, p.info["name"], p.info["memory_percent"])
        for p in psutil.process_iter(["name", "cpu_percent", "memory_percent"])
    ]
    procs.sort(reverse=True)


def _cpu_per_call(fn: Callable[[], object]) -> float:
    """Median CPU milliseconds per call over ROUNDS rounds of SAMPLES calls."""
    fn()
    results = []
    for _ in range(ROUNDS):
        start = time.process_time()
        for _ in range(SAMPLES):
            fn()
        results.append((time.process_time() - start) / SAMPLES * 1000)
    return median(results)


def sampler_costs() -> dict[str, float]:
    sid = str(uuid.uuid4())
    now = datetime.now(UTC)
    fast = HostSampler(top_processes=10)
    slow = HostSampler(top_processes=10)
    slow._read_cpu_ns = host.read_cpu_ns_psutil
    return {
        "psutil process_iter(name, cpu_percent, memory_percent), all processes": _cpu_per_call(
            _naive_top10
        ),
        "agent sample, process CPU via psutil process_iter(cpu_times)": _cpu_per_call(
            lambda: slow.sample(sid, now)
        ),
        "agent sample, process CPU via /proc/<pid>/schedstat (default)": _cpu_per_call(
            lambda: fast.sample(sid, now)
        ),
    }


def agent_process(seconds: float = 30.0, warmup: float = 8.0) -> tuple[float, float]:
    """Run `fleetpulse agent`; return (% of one core, peak RSS MiB) after warm-up."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "agent", "--server-id", str(uuid.uuid4())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "FLEETPULSE_METRICS_PORT": "0"},
    )
    try:
        p = psutil.Process(proc.pid)
        time.sleep(warmup)
        t0 = p.cpu_times()
        w0 = time.monotonic()
        rss = 0.0
        while time.monotonic() - w0 < seconds:
            rss = max(rss, p.memory_info().rss / 2**20)
            time.sleep(1)
        t1 = p.cpu_times()
        cpu = (t1.user + t1.system - t0.user - t0.system) / (time.monotonic() - w0) * 100
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return cpu, rss


def run() -> str:
    idle = idle_processes(IDLE)
    try:
        time.sleep(1)
        nprocs = len(psutil.pids())
        costs = sampler_costs()
        stack_up()
        runs = [agent_process() for _ in range(3)]
    finally:
        kill_all(idle)
    base = next(iter(costs.values()))
    lines = [
        "## Agent cost",
        "",
        f"Host with {nprocs} processes ({IDLE} idle `sleep` processes started by the benchmark). "
        f"CPU per call: median of {ROUNDS} rounds of {SAMPLES} calls, top 10 processes.",
        "",
        "| Way to sample | CPU ms per sample | % of one core at 1 Hz | Cost vs first row |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, ms in costs.items():
        lines.append(f"| {name} | {ms:.2f} | {ms / 10:.2f} % | 1/{base / ms:.1f} |")
    cpus = [c for c, _ in runs]
    rss = [r for _, r in runs]
    lines += [
        "",
        "The whole `fleetpulse agent` process (sampling, validation, JSON, Kafka delivery), "
        "sending to the local broker, 30 s after an 8 s warm-up, 3 runs:",
        "",
        "| Measure | Median | Range | Target |",
        "| --- | ---: | ---: | ---: |",
        row("CPU, % of one core", cpus, "{:.2f} %", "at most 1 %"),
        row("Resident memory (peak RSS), MiB", rss, "{:.1f}", "under 50 MB"),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
