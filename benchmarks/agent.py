"""Agent cost: CPU per sample and resident memory with 500 idle processes on the host.

Compares, in one run on the same process table, three ways to find the top processes:
psutil's `process_iter` with name/cpu_percent/memory_percent for every process (the
straightforward loop over cached `Process` objects), psutil's `process_iter(["cpu_times"])`,
and the agent's `/proc/<pid>/schedstat` reader; then runs the real `fleetpulse agent` against
the local stack and measures its CPU and memory beside two peers on the same host, in
interleaved rounds: node_exporter (Debian's `prometheus-node-exporter`, default collectors,
scraped once a second over loopback by this benchmark) and collectd (1 s interval, the cpu,
memory, load, interface, disk, df and processes plugins writing to csv files). Each peer is
started here as a child process, on a free loopback port or with a configuration in a
temporary folder, and stopped after; a system service of the same program is neither used
nor measured (only our children's pids are).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from benchmarks.common import idle_processes, kill_all, median, row, stack_up
from producers.agent import host
from producers.agent.host import HostSampler

ROUNDS = 5
SAMPLES = 20
IDLE = 500
#: Whole-process measurements: seconds measured after a warm-up, and interleaved rounds.
MEASURE_S = 30.0
WARMUP_S = 8.0
PROCESS_ROUNDS = 3
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
COLLECTD = "/usr/sbin/collectd"
COLLECTD_PLUGINS = ("cpu", "memory", "load", "interface", "disk", "df", "processes")


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


@dataclass(frozen=True)
class Usage:
    """One measured run of one process."""

    cpu: float  # % of one core over the measurement
    rss: float  # MiB, the largest of one reading a second during the measurement
    hwm: float  # MiB, the kernel's high-water mark (VmHWM): start-up included


def _measure(name: str, proc: subprocess.Popen[bytes], seconds: float, warmup: float) -> Usage:
    """CPU and resident memory of `proc` alone (not its children, it has none) after
    `warmup`; raises if it exits meanwhile."""
    p = psutil.Process(proc.pid)
    time.sleep(warmup)
    if proc.poll() is not None:
        raise RuntimeError(f"{name} exited during the warm-up (status {proc.returncode})")
    t0 = p.cpu_times()
    w0 = time.monotonic()
    rss = 0.0
    while time.monotonic() - w0 < seconds:
        rss = max(rss, p.memory_info().rss / 2**20)
        time.sleep(1)
    t1 = p.cpu_times()
    cpu = (t1.user + t1.system - t0.user - t0.system) / (time.monotonic() - w0) * 100
    if proc.poll() is not None:
        raise RuntimeError(f"{name} exited while measured (status {proc.returncode})")
    return Usage(cpu, rss, _hwm(proc.pid))


def _hwm(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def agent_process(seconds: float = MEASURE_S, warmup: float = WARMUP_S) -> Usage:
    """Run `fleetpulse agent` and measure it after warm-up."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "agent", "--server-id", str(uuid.uuid4())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "FLEETPULSE_METRICS_PORT": "0"},
    )
    try:
        return _measure("fleetpulse agent", proc, seconds, warmup)
    finally:
        _stop(proc)


@contextmanager
def _scraping(port: int) -> Iterator[None]:
    """GET /metrics on 127.0.0.1:`port` once a second, on one kept-alive connection as
    Prometheus does, from a thread of this process (the benchmark is the scraper: its cost is
    not node_exporter's)."""
    done = threading.Event()

    def scrape() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        while not done.wait(1.0 - time.time() % 1.0):
            try:
                conn.request("GET", "/metrics")
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()  # not up yet (the warm-up covers it): connect again next time
        conn.close()

    thread = threading.Thread(target=scrape, name="scraper", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def node_exporter_process(seconds: float = MEASURE_S, warmup: float = WARMUP_S) -> Usage:
    """node_exporter with its default collectors on a free loopback port, scraped at 1 Hz."""
    port = _free_port()
    proc = subprocess.Popen(
        [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with _scraping(port):
            return _measure("node_exporter", proc, seconds, warmup)
    finally:
        _stop(proc)


def collectd_config(folder: Path) -> Path:
    """A minimal collectd configuration in `folder`: 1 s interval, the host plugins, csv out."""
    loads = "\n".join(f"LoadPlugin {name}" for name in (*COLLECTD_PLUGINS, "csv"))
    conf = folder / "collectd.conf"
    conf.write_text(
        f"""Hostname "bench"
FQDNLookup false
Interval 1
BaseDir "{folder}"
PIDFile "{folder}/collectd.pid"
PluginDir "/usr/lib/collectd"
TypesDB "/usr/share/collectd/types.db"
{loads}
<Plugin csv>
  DataDir "{folder}/csv"
  StoreRates true
</Plugin>
"""
    )
    return conf


def collectd_process(seconds: float = MEASURE_S, warmup: float = WARMUP_S) -> Usage:
    """collectd in the foreground on a configuration of its own in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="collectd-bench-") as tmp:
        conf = collectd_config(Path(tmp))
        proc = subprocess.Popen(
            [COLLECTD, "-f", "-C", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            usage = _measure("collectd", proc, seconds, warmup)
        finally:
            _stop(proc)
        if not any((Path(tmp) / "csv").rglob("*")):
            raise RuntimeError("collectd wrote no csv files: its plugins did not run")
        return usage


def _version(argv: list[str], marker: str) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    for line in (out.stdout + out.stderr).splitlines():
        if marker in line:
            return line.strip()
    return "version unknown"


def _others_running() -> list[str]:
    """Processes of the peers' programs that are not ours (a system service, say)."""
    names = {"prometheus-node-exporter", "node_exporter", "collectd"}
    return sorted(
        f"{p.info['name']} (pid {p.pid})"
        for p in psutil.process_iter(["name"])
        if p.info["name"] in names
    )


def _peers_missing() -> list[str]:
    return [path for path in (NODE_EXPORTER, COLLECTD) if shutil.which(path) is None]


MEASURED: dict[str, Callable[[], Usage]] = {
    "fleetpulse agent": agent_process,
    "node_exporter": node_exporter_process,
    "collectd": collectd_process,
}


def process_runs(rounds: int = PROCESS_ROUNDS) -> dict[str, list[Usage]]:
    """Each measured program once per round, in turn (interleaved: a noisy minute on the host
    hits every program of that round, not all the runs of one)."""
    runs: dict[str, list[Usage]] = {name: [] for name in MEASURED}
    for _ in range(rounds):
        for name, measure in MEASURED.items():
            runs[name].append(measure())
    return runs


def _cell(values: Sequence[float], fmt: str) -> str:
    return f"{fmt.format(median(values))} ({fmt.format(min(values))} to {fmt.format(max(values))})"


def run() -> str:
    missing = _peers_missing()
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: run `make bench-setup`")
    versions = {
        "node_exporter": _version([NODE_EXPORTER, "--version"], "version"),
        "collectd": _version([COLLECTD, "-h"], "collectd 5"),
    }
    idle = idle_processes(IDLE)
    try:
        time.sleep(1)
        nprocs = len(psutil.pids())
        costs = sampler_costs()
        stack_up()
        others = _others_running()
        runs = process_runs()
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
    ours = runs["fleetpulse agent"]
    cpus = [u.cpu for u in ours]
    rss = [u.rss for u in ours]
    lines += [
        "",
        "The whole `fleetpulse agent` process (sampling, validation, JSON, Kafka delivery over "
        f"TLS and SCRAM), sending to the local broker, {MEASURE_S:.0f} s after a "
        f"{WARMUP_S:.0f} s warm-up, {PROCESS_ROUNDS} runs:",
        "",
        "| Measure | Median | Range | Target |",
        "| --- | ---: | ---: | ---: |",
        row("CPU, % of one core", cpus, "{:.2f} %", "at most 0.5 %"),
        row("Resident memory (peak RSS), MiB", rss, "{:.1f}", "at most 30 MiB"),
        "",
        "Beside two peers on the same host and the same 500 idle processes, one run of each "
        f"per round in turn, {PROCESS_ROUNDS} rounds, medians (range): node_exporter "
        f"({versions['node_exporter']}; default collectors, on a loopback port of its own, "
        "scraped once a second by the benchmark, whose scraping is not counted: only the "
        f"exporter's process is measured) and collectd ({versions['collectd']}; 1 s interval, "
        f"plugins {', '.join(COLLECTD_PLUGINS)}, writing csv files to a temporary folder). "
        "Peak RSS is the largest of one reading a second during the measurement; the "
        "high-water mark (VmHWM) includes start-up.",
        "",
        "| Measure | fleetpulse agent | node_exporter | collectd | agent / node_exporter "
        "| agent / collectd |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    measures: list[tuple[str, Callable[[Usage], float], str]] = [
        ("CPU, % of one core", lambda u: u.cpu, "{:.2f} %"),
        ("Peak RSS, MiB", lambda u: u.rss, "{:.1f}"),
        ("RSS high-water mark (VmHWM), MiB", lambda u: u.hwm, "{:.1f}"),
    ]
    for label, get, fmt in measures:
        values = {name: [get(u) for u in usages] for name, usages in runs.items()}
        mine = median(values["fleetpulse agent"])
        ratios = [
            f"{mine / median(values[peer]):.2f}" if median(values[peer]) else "n/a"
            for peer in ("node_exporter", "collectd")
        ]
        cells = [_cell(values[name], fmt) for name in MEASURED]
        lines.append(f"| {label} | {' | '.join(cells)} | {' | '.join(ratios)} |")
    if others:
        lines += ["", f"Also running, not ours and not measured: {', '.join(others)}."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
