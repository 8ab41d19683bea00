"""Simulator throughput: 20,000 hosts at 1 Hz against the local broker, and the unpaced rate.

Paced: `fleetpulse simulate --hosts 20000` for 30 s, 3 runs: seconds that finished late,
seconds skipped, events acknowledged, CPU and memory of the process. Unpaced: the same
generation and delivery path with no clock, to show the headroom.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time

import psutil

from benchmarks.common import row, stack_up
from producers import MetricProducer, SimulatorSettings
from producers.simulator import fleet, iso_second

HOSTS = 20_000
SECONDS = 30


def paced_run() -> dict[str, float]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "simulate", "--hosts", str(HOSTS),
         "--duration", str(SECONDS)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FLEETPULSE_METRICS_PORT": "0"},
    )  # fmt: skip
    p = psutil.Process(proc.pid)
    rss = 0.0
    start = time.monotonic()
    cpu = 0.0
    while proc.poll() is None:
        try:
            rss = max(rss, p.memory_info().rss / 2**20)
            t = p.cpu_times()
            cpu = t.user + t.system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    wall = time.monotonic() - start
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"simulator failed (exit {proc.returncode}):\n{err[-3000:]}")
    return {**summary(err), "cpu_pct": cpu / wall * 100, "rss": rss}


def summary(log_text: str) -> dict[str, float]:
    """The counts in `fleetpulse simulate`'s last closing log line (a log appended to by
    several runs holds one per run). Events left undelivered at its stop count as dropped."""
    found = re.findall(
        r"(\d+) seconds, (\d+) events, (\d+) late seconds, (\d+) skipped; "
        r"(\d+) sent, (\d+) dropped(?:, (\d+) undelivered)?",
        log_text,
    )
    if not found:
        raise RuntimeError(f"the simulator did not report its counts:\n{log_text[-3000:]}")
    *counts, undelivered = found[-1]
    names = ("ticks", "events", "late", "skipped", "sent", "dropped")
    result = dict(zip(names, map(float, counts), strict=True))
    result["dropped"] += float(undelivered or 0)
    return result


async def _unpaced(events_target: int) -> float:
    settings = SimulatorSettings(hosts=HOSTS)
    hosts = fleet(settings.seed, HOSTS, settings.sim_processes)
    templates = [h.template for h in hosts]
    async with MetricProducer(settings) as producer:
        t = int(time.time())
        start = time.perf_counter()
        sent = 0
        while sent < events_target:
            ts = iso_second(t)
            for i, h in enumerate(hosts):
                producer.send_encoded(h.server_id, h.event_json(t, ts, templates[i]))
                if i % 2000 == 1999:
                    await asyncio.sleep(0)
            sent += len(hosts)
            t += 1
        assert await producer.flush(120)
        return sent / (time.perf_counter() - start)


def run() -> str:
    stack_up()
    paced = [paced_run() for _ in range(3)]
    unpaced = [asyncio.run(_unpaced(200_000)) for _ in range(3)]
    rates = [r["sent"] / r["ticks"] for r in paced]
    cpu = [r["cpu_pct"] for r in paced]
    rss = [r["rss"] for r in paced]
    lines = [
        "## Simulator throughput",
        "",
        f"`fleetpulse simulate --hosts {HOSTS}` for {SECONDS} s against the local broker "
        "(on the same machine), 3 runs; events are ~400-byte JSON with 3 processes each.",
        "",
        "| Measure | Median | Range |",
        "| --- | ---: | ---: |",
        row("Events acknowledged per simulated second", rates, "{:,.0f}"),
        row("Seconds finished late (> 1 s)", [r["late"] for r in paced], "{:.0f}"),
        row("Seconds skipped", [r["skipped"] for r in paced], "{:.0f}"),
        row("Events dropped", [r["dropped"] for r in paced], "{:.0f}"),
        row("Simulator CPU, % of one core", cpu, "{:.0f} %"),
        row("Simulator peak RSS, MiB", rss, "{:.0f}"),
        "",
        "Unpaced (no clock: generate and deliver 200,000 events as fast as possible, until "
        "all are acknowledged), 3 runs:",
        "",
        "| Measure | Median | Range |",
        "| --- | ---: | ---: |",
        row("Events/s generated and acknowledged", unpaced, "{:,.0f}"),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
