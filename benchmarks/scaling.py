"""Stream scaling: twice the workers on twice the partitions, through twice the backlog.

For each configuration (1 worker on a 2-partition raw topic, 2 on 4, 4 on 8; the workers of a
configuration share one consumer group), a fresh raw topic is filled with HOSTS_PER_WORKER
simulated hosts per worker x SECONDS one-second samples; then the workers start at once and
the clock runs until every 5 s window the backlog's event time closes is out. Each run's
output is checked before it counts: every window of the backlog read back (at its highest
revision) holds its 5 samples, and the DLQ is empty; a run that falls short is reported as
failed, never averaged in. Reported per configuration, medians over RUNS runs interleaved
(the order rotating from round to round): the aggregate sustained rate (5 s windows out per
second between 10 % and 90 % of them, times 5), the overall rate from the workers' start,
the whole machine's CPU use over the run (`psutil.cpu_percent`, % of all cores) and in the
3 s before it (the load already there), the CPU of the workers and of the broker, and how
many windows the check saw emitted more than once (a worker hands partitions over as the
others join, and the new owner replays from the last checkpoint; the timing counts each
window once).

    python -m benchmarks.scaling [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.common import SECURITY, WINDOW, drop_topics, median, stack_up
from infra import stack
from infra.settings import StackSettings
from producers import MetricProducer, SimulatorSettings
from producers.simulator import fleet, iso_second
from runtime.settings import KafkaSettings
from runtime.topics import create_topics
from schemas.topics import TopicSpec

#: Workers per configuration; each gets two raw partitions and HOSTS_PER_WORKER hosts.
CONFIGS = (1, 2, 4)
PARTITIONS_PER_WORKER = 2
HOSTS_PER_WORKER = 2_000
SECONDS = 50
RUNS = 3
#: Output topics' partitions (the sink side is not measured here).
OUT_PARTITIONS = 6


class Shortfall(Exception):
    """A run whose output lost data: it is a failure, not a figure."""


class WorkerExited(Exception):
    """A worker of the run exited before the backlog was through."""

    def __init__(self, index: int) -> None:
        super().__init__(f"stream worker {index} exited")
        self.index = index


@dataclass
class Run:
    sustained: float  # events/s, all workers, 10 % to 90 % of the windows
    overall: float  # events/s from the workers' start to the last timed window
    machine: float  # whole machine CPU during the run, % of all cores
    before: float  # whole machine CPU in the 3 s before the run, % of all cores
    workers: float  # the workers' CPU together, % of one core
    broker: float  # the broker's CPU, % of one core
    reemitted: int = 0  # windows emitted more than once (rebalance replays)


def _topics(tag: str) -> tuple[str, dict[str, str], dict[str, str]]:
    raw = f"bench.scale.raw.{tag}"
    outs = {k: f"bench.scale.{k}.{tag}" for k in ("a5", "a1h", "a1d", "st", "dlq")}
    env = {
        "FLEETPULSE_STREAM_GROUP": f"bench-scale-{tag}",
        "FLEETPULSE_RAW_TOPIC": raw,
        "FLEETPULSE_AGG_5S_TOPIC": outs["a5"],
        "FLEETPULSE_AGG_1H_TOPIC": outs["a1h"],
        "FLEETPULSE_AGG_1D_TOPIC": outs["a1d"],
        "FLEETPULSE_STATUS_TOPIC": outs["st"],
        "FLEETPULSE_DLQ_TOPIC": outs["dlq"],
        # Several workers on one machine: no /metrics port each.
        "FLEETPULSE_METRICS_PORT": "0",
    }
    return raw, outs, env


async def _fill(bootstrap: str, topic: str, hosts: int) -> int:
    """`hosts` simulated hosts, one sample a second for SECONDS, in whole 5 s windows; the
    first second."""
    sim = fleet(13, hosts, 3)
    settings = SimulatorSettings(kafka_bootstrap=bootstrap, hosts=hosts)
    t0 = (int(time.time()) - 3600) // WINDOW * WINDOW
    async with MetricProducer(settings, topic=topic) as producer:
        for t in range(t0, t0 + SECONDS):
            ts = iso_second(t)
            for h in sim:
                producer.send_encoded(h.server_id, h.event_json(t, ts))
            await asyncio.sleep(0)
        assert await producer.flush(300)
    return t0


async def _count(consumer: AIOKafkaConsumer, topic: str) -> int:
    tps = [TopicPartition(topic, p) for p in range(OUT_PARTITIONS)]
    return sum((await consumer.end_offsets(tps)).values())


def _start(bootstrap: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A worker, its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "stream"],
            env={**os.environ, **env, "FLEETPULSE_KAFKA_BOOTSTRAP": bootstrap},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _tail(log: Path, lines: int = 5) -> str:
    """The last lines of a worker's log, on one line."""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return " | ".join(line.strip() for line in tail) or "(empty)"


def _cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


async def _watch(
    bootstrap: str,
    topic: str,
    procs: list[subprocess.Popen[bytes]],
    broker: psutil.Process,
    last_start: int,
    target: int,
    hosts: int,
) -> Run:
    """Follow the workers (just started) until `target` distinct 5 s windows starting
    before `last_start` are out (a window emitted again after a rebalance counts once);
    their rates and CPU (`before` is left to the caller, who sampled the machine before
    starting them)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **SECURITY)
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(OUT_PARTITIONS)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    broker0 = _cpu_seconds(broker)
    psutil.cpu_percent(interval=None)
    start = time.monotonic()
    workers = [psutil.Process(p.pid) for p in procs]
    cpu = {w.pid: 0.0 for w in workers}
    seen: set[tuple[str, str]] = set()
    samples: list[tuple[float, int]] = []
    try:
        while True:
            for i, p in enumerate(procs):
                if p.poll() is not None:
                    raise WorkerExited(i)
            batch = await consumer.getmany(timeout_ms=250, max_records=50_000)
            for records in batch.values():
                for r in records:
                    w = orjson.loads(r.value)
                    if datetime.fromisoformat(w["window_start"]).timestamp() < last_start:
                        seen.add((w["server_id"], w["window_start"]))
            now = time.monotonic() - start
            samples.append((now, len(seen)))
            for w in workers:
                cpu[w.pid] = _cpu_seconds(w)
            if len(seen) >= target:
                break
        machine = psutil.cpu_percent(interval=None)
        broker_cpu = _cpu_seconds(broker) - broker0
    finally:
        await consumer.stop()
    t10, n10 = next((t, n) for t, n in samples if n >= 0.1 * target)
    t90, n90 = next((t, n) for t, n in samples if n >= 0.9 * target)
    return Run(
        sustained=(n90 - n10) * WINDOW / (t90 - t10),
        overall=hosts * SECONDS / now,
        machine=machine,
        before=0.0,
        workers=100 * sum(cpu.values()) / now,
        broker=100 * broker_cpu / now,
    )


async def _check(bootstrap: str, outs: dict[str, str], hosts: int, timeout: float = 90) -> int:
    """Read the 5 s topic back until every window of the backlog is there (the last of each
    host closes by the idle clock): each must hold all its samples; the DLQ must be empty.
    Raises `Shortfall` with what is missing; returns how many windows were emitted more than
    once (a rebalance replays from the last checkpoint)."""
    consumer = AIOKafkaConsumer(
        outs["a5"], bootstrap_servers=bootstrap, auto_offset_reset="earliest", **SECURITY
    )
    expected = hosts * SECONDS // WINDOW
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    read = 0
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while len(counts) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            for records in batch.values():
                read += len(records)
                for r in records:
                    w = orjson.loads(r.value)
                    key = (w["server_id"], w["window_start"])
                    rev = w.get("revision", 0)
                    if key not in counts or rev >= counts[key][0]:
                        counts[key] = (rev, w["count"])
        dead = await _count(consumer, outs["dlq"])
    finally:
        await consumer.stop()
    short = sum(1 for _, n in counts.values() if n != WINDOW)
    if len(counts) != expected or short or dead:
        raise Shortfall(
            f"{len(counts):,} of {expected:,} windows, {short:,} with fewer than {WINDOW} "
            f"samples, {dead:,} dead letters"
        )
    return read - len(counts)


def scaling_run(bootstrap: str, broker: psutil.Process, workers: int) -> Run | Shortfall:
    """`workers` workers in one group through a backlog of `workers` x HOSTS_PER_WORKER
    hosts on `workers` x PARTITIONS_PER_WORKER partitions: the figures, or the shortfall."""
    partitions = workers * PARTITIONS_PER_WORKER
    hosts = workers * HOSTS_PER_WORKER
    raw, outs, env = _topics(uuid.uuid4().hex[:8])
    names = [raw, *outs.values(), f"{env['FLEETPULSE_STREAM_GROUP']}-rollups-changelog"]
    kafka = KafkaSettings(kafka_bootstrap=bootstrap)
    procs: list[subprocess.Popen[bytes]] = []
    logs = Path(tempfile.mkdtemp(prefix="fleetpulse-scaling-"))
    try:
        asyncio.run(
            create_topics(
                kafka,
                [
                    TopicSpec(raw, partitions, 3_600_000),
                    *(TopicSpec(n, OUT_PARTITIONS, 3_600_000) for n in outs.values()),
                ],
            )
        )
        t0 = asyncio.run(_fill(bootstrap, raw, hosts))
        last_start = t0 + SECONDS - WINDOW
        # Timed: all 5 s windows but the ones the idle clock closes at the end.
        target = hosts * (SECONDS // WINDOW - 1)

        async def timed() -> Run:
            # The machine's load before the start, then the workers, all at once.
            before = psutil.cpu_percent(interval=3)
            procs.extend(_start(bootstrap, env, logs / f"worker-{i}.log") for i in range(workers))
            figures = await _watch(bootstrap, outs["a5"], procs, broker, last_start, target, hosts)
            figures.before = before
            return figures

        try:
            figures = asyncio.run(timed())
        except WorkerExited as exc:
            raise RuntimeError(f"{exc}: {_tail(logs / f'worker-{exc.index}.log')}") from None
        try:
            figures.reemitted = asyncio.run(_check(bootstrap, outs, hosts))
        except Shortfall as exc:
            return exc
        return figures
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
        asyncio.run(drop_topics(bootstrap, names))
        shutil.rmtree(logs, ignore_errors=True)


def _broker(settings: StackSettings) -> psutil.Process:
    """The local stack's broker process (one broker)."""
    pids = [c.pid for c in stack.status(settings) if c.name.startswith("kafka") and c.pid]
    if len(pids) != 1:
        raise RuntimeError(f"expected one broker of the local stack, found {len(pids)}")
    return psutil.Process(pids[0])


def measure(runs: int) -> dict[int, list[Run | Shortfall]]:
    """`runs` rounds of every configuration, the order rotating from round to round; prints
    each run's verdict."""
    settings = stack_up()
    broker = _broker(settings)
    results: dict[int, list[Run | Shortfall]] = {w: [] for w in CONFIGS}
    for i in range(runs):
        order = CONFIGS[i % len(CONFIGS) :] + CONFIGS[: i % len(CONFIGS)]
        for workers in order:
            result = scaling_run(settings.kafka_bootstrap, broker, workers)
            results[workers].append(result)
            verdict = (
                f"FAILED: {result}"
                if isinstance(result, Shortfall)
                else f"complete, {result.sustained:,.0f} events/s sustained, machine "
                f"{result.machine:.0f} % busy ({result.before:.0f} % before), workers "
                f"{result.workers:.0f} %, broker {result.broker:.0f} % of a core, "
                f"{result.reemitted:,} windows emitted again"
            )
            print(
                f"run {i + 1}/{runs}, {workers} worker(s): {verdict}", file=sys.stderr, flush=True
            )
    return results


def _cell(values: list[float], fmt: str) -> str:
    if not values:
        return "n/a"
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return f"{fmt.format(median(values))} ({lo} to {hi})"


def section(results: dict[int, list[Run | Shortfall]], runs: int) -> str:
    done = {w: [r for r in rs if isinstance(r, Run)] for w, rs in results.items()}
    failures = [
        f"{w} worker(s): {r}" for w, rs in results.items() for r in rs if not isinstance(r, Run)
    ]
    base = median([r.sustained for r in done[CONFIGS[0]]]) if done[CONFIGS[0]] else None
    lines = [
        "## Stream scaling",
        "",
        "Twice the workers on twice the raw partitions through twice the backlog: "
        + ", ".join(f"{w} worker(s) on {w * PARTITIONS_PER_WORKER} partitions" for w in CONFIGS)
        + ", "
        f"the workers of a run in one consumer group, started at once; {HOSTS_PER_WORKER:,} "
        f"simulated hosts per worker x {SECONDS} s of samples (3 processes each), all three "
        f"resolutions; {runs} runs of each, interleaved (the order rotating). The broker runs on "
        "the same 2 cores. Every run's output checked first: every 5 s window of the backlog "
        f"with its {WINDOW} samples, DLQ empty; runs passed: "
        + ", ".join(f"{len(done[w])} of {len(results[w])} ({w})" for w in CONFIGS)
        + (f" (failed: {'; '.join(failures)})." if failures else ".")
        + " Machine CPU: `psutil.cpu_percent` over the run, % of both cores; before: the 3 s "
        "before the workers started (load already on the machine). Medians, range in brackets.",
        "",
        "| Workers | Partitions | Backlog, events | Events/s sustained | x 1 worker | "
        "Events/s overall | Machine CPU, % | Before, % | Workers' CPU, % of a core | "
        "Broker CPU, % of a core | Windows emitted again |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for w in CONFIGS:
        rs = done[w]
        sustained = [r.sustained for r in rs]
        ratio = f"{median(sustained) / base:.2f}" if rs and base else "n/a"
        cells = [
            str(w),
            str(w * PARTITIONS_PER_WORKER),
            f"{w * HOSTS_PER_WORKER * SECONDS:,}",
            _cell(sustained, "{:,.0f}"),
            ratio,
            _cell([r.overall for r in rs], "{:,.0f}"),
            _cell([r.machine for r in rs], "{:.0f}"),
            _cell([r.before for r in rs], "{:.0f}"),
            _cell([r.workers for r in rs], "{:.0f}"),
            _cell([r.broker for r in rs], "{:.0f}"),
            _cell([r.reemitted for r in rs], "{:,.0f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run() -> str:
    return section(measure(RUNS), RUNS)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scaling", description="The stream scaling benchmark."
    )
    parser.add_argument("--runs", type=int, default=RUNS, help=f"rounds (default {RUNS})")
    runs = parser.parse_args().runs
    print(section(measure(runs), runs))


if __name__ == "__main__":
    main()
