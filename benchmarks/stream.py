"""Stream worker: throughput through a backlog, and window-end-to-emission delay when live.

Throughput: 300,000 simulator events (6,000 hosts x 50 s, ~400 bytes each) are written to a
fresh 6-partition raw topic; then a worker starts and the clock runs until every 5 s window
the backlog's event time closes has been emitted. Each run's output is checked before it
counts: every one of the 60,000 windows read back (at its highest revision) holds its 5
samples, and the DLQ is empty; a run that falls short is reported as failed, never averaged
in. `python -m benchmarks.stream catch-up [--runs N]` does only that check, N times (20 by
default). Reported: time from process start to the first window out,
the sustained rate (5 s windows emitted per second between 10 % and 90 % of the backlog,
times the 5 events in each), the overall rate including startup, and the worker's CPU and
peak memory.

Quix Streams 3.28.1 (`benchmarks/quix/app.py`, in a virtualenv of its own) drains identical
backlogs (each run its own raw topic, as ours), its runs interleaved with ours: 5 s windows
alone, and 5 s windows with hourly and daily ones cascaded from them. It is timed the same
way (its 5 s windows out; its overall rate runs to the moment it has processed the backlog's
last record, which it reports itself) and checked first. Quix closes a window only when its
server's event time passes end plus grace, so of the backlog alone the 5 s windows that
close are those ending at least the grace before each server's last sample (8 of 10), and no
hour or day: the timed part waits for those 8. Then two more samples per server (two days
on, and 10 s after that) close every window of the backlog, and each 5 s, hourly and daily
window must hold its exact count. `python -m benchmarks.stream quix [--runs N]` does only the
Quix runs.

Delay: the simulator sends N hosts at 1 Hz in real time to a worker that keeps up; each 5 s
window's `emitted_at` minus its `window_end` (which includes the 5 s grace the window waits
for stragglers). Broker and worker share the machine's 2 cores; every run has
its own topics and consumer group.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import orjson
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.common import (
    ROOT,
    SECURITY,
    WINDOW,
    checkout,
    code_env,
    drop_topics,
    head,
    median,
    percentile,
    row,
    stack_up,
)
from producers import MetricProducer, SimulatorSettings
from producers.simulator import Simulator, fleet, iso_second
from runtime.settings import KafkaSettings
from runtime.topics import create_topics
from schemas import Resolution, WindowAggregate
from schemas.resolutions import BASE
from schemas.topics import TopicSpec

HOSTS = 6000
#: Events/s one worker is to sustain through the backlog.
TARGET = 60_000
SECONDS = 50
EVENTS = HOSTS * SECONDS
LIVE_HOSTS = 3000
LIVE_SECONDS = 60
#: Throughput runs of each worker (ours, and Quix in each configuration) per benchmark.
RUNS = 3
#: The 5 s windows' grace (the stream worker's default), s.
GRACE = int(BASE.grace)
QUIX_APP = ROOT / "benchmarks" / "quix" / "app.py"
QUIX_PYTHON = ROOT / "benchmarks" / "quix" / ".venv" / "bin" / "python"
#: The Quix configurations: label → whether hourly and daily windows are cascaded too.
QUIX_CONFIGS = {"5 s": False, "5 s + 1 h + 1 d": True}


class Shortfall(Exception):
    """A run whose output lost data: it is a failure, not a figure."""


@dataclass
class Run:
    startup: float  # process start → first 5 s window out, s
    sustained: float  # events/s while working through the backlog
    overall: float  # events/s from process start to the last window
    cpu: float  # worker CPU, % of one core, over the run
    rss: float  # worker peak RSS, MiB


def _topics(tag: str) -> tuple[str, dict[str, str], dict[str, str]]:
    raw = f"bench.raw.{tag}"
    outs = {k: f"bench.{k}.{tag}" for k in ("a5", "a1h", "a1d", "st", "dlq")}
    env = {
        "FLEETPULSE_STREAM_GROUP": f"bench-{tag}",
        "FLEETPULSE_RAW_TOPIC": raw,
        "FLEETPULSE_AGG_5S_TOPIC": outs["a5"],
        "FLEETPULSE_AGG_1H_TOPIC": outs["a1h"],
        "FLEETPULSE_AGG_1D_TOPIC": outs["a1d"],
        "FLEETPULSE_STATUS_TOPIC": outs["st"],
        "FLEETPULSE_DLQ_TOPIC": outs["dlq"],
    }
    return raw, outs, env


def _names(raw: str, outs: dict[str, str], env: dict[str, str]) -> list[str]:
    """Every topic of a run: raw, outputs and the worker's changelog."""
    return [raw, *outs.values(), f"{env['FLEETPULSE_STREAM_GROUP']}-rollups-changelog"]


@dataclass(frozen=True)
class Backlog:
    """A raw topic filled by `_fill`: `HOSTS` servers, one sample a second for `SECONDS`."""

    topic: str
    start: int  # the first second's epoch time (whole 5 s windows from there)


async def _fill(bootstrap: str, topic: str, seconds: list[int] | None = None) -> int:
    """Write the backlog's samples (or those of `seconds` only) to `topic`; its start."""
    hosts = fleet(7, HOSTS, 3)
    templates = [h.template for h in hosts]
    settings = SimulatorSettings(kafka_bootstrap=bootstrap, hosts=HOSTS)
    t0 = (int(time.time()) - 3600) // WINDOW * WINDOW  # whole windows: each host 10 of 5
    async with MetricProducer(settings, topic=topic) as producer:
        for t in seconds or range(t0, t0 + SECONDS):
            ts = iso_second(t)
            for i, h in enumerate(hosts):
                producer.send_encoded(h.server_id, h.event_json(t, ts, templates[i]))
            await asyncio.sleep(0)
        assert await producer.flush(300)
    return t0


def fill(bootstrap: str, topic: str) -> Backlog:
    """The raw topic `topic` (6 partitions) created and filled with the backlog."""
    asyncio.run(
        create_topics(KafkaSettings(kafka_bootstrap=bootstrap), [TopicSpec(topic, 6, 3_600_000)])
    )
    return Backlog(topic, asyncio.run(_fill(bootstrap, topic)))


async def _count(consumer: AIOKafkaConsumer, topic: str) -> int:
    tps = [TopicPartition(topic, p) for p in range(6)]
    return sum((await consumer.end_offsets(tps)).values())


def _start_worker(
    bootstrap: str, env: dict[str, str], code: Path = ROOT, connect: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """The worker under test; `connect` overrides how it reaches the broker (another
    listener), while the benchmark's own clients keep `bootstrap`."""
    return subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "stream"],
        env={
            **os.environ,
            **env,
            **code_env(code),
            "FLEETPULSE_KAFKA_BOOTSTRAP": bootstrap,
            **(connect or {}),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _watch(
    bootstrap: str,
    topic: str,
    proc: subprocess.Popen[bytes],
    target: int,
    consumed: Callable[[], float | None] | None = None,
) -> Run:
    """Follow the worker until `target` windows are out; sample its output and resources.
    With `consumed` (the wall time the worker reports it processed the backlog's last
    record, None until it has), the overall rate runs to that moment instead."""
    ps = psutil.Process(proc.pid)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **SECURITY)
    await consumer.start()
    start = time.monotonic()
    wall = time.time()
    samples: list[tuple[float, int]] = []
    rss = 0
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("the stream worker exited")
            n = await _count(consumer, topic)
            now = time.monotonic() - start
            samples.append((now, n))
            rss = max(rss, ps.memory_info().rss)
            if n >= target:
                cpu = ps.cpu_times()
                break
            await asyncio.sleep(0.25)
        elapsed = now
        if consumed is not None:
            deadline = time.monotonic() + 120
            while (done := consumed()) is None:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the worker never reported the backlog processed")
                await asyncio.sleep(0.25)
            elapsed = done - wall
    finally:
        await consumer.stop()
    first = next(t for t, n in samples if n > 0)
    t10 = next(t for t, n in samples if n >= 0.1 * target)
    t90 = next(t for t, n in samples if n >= 0.9 * target)
    n10 = next(n for t, n in samples if n >= 0.1 * target)
    n90 = next(n for t, n in samples if n >= 0.9 * target)
    return Run(
        startup=first,
        sustained=(n90 - n10) * WINDOW / (t90 - t10),
        overall=EVENTS / elapsed,
        cpu=100 * (cpu.user + cpu.system) / now,
        rss=rss / 2**20,
    )


async def _check(bootstrap: str, outs: dict[str, str], timeout: float = 90) -> None:
    """Read the 5 s topic back until every window of the backlog is there (the last of each
    host closes by the idle clock): each must hold all its samples; the DLQ must be empty.
    Raises `Shortfall` with what is missing."""
    consumer = AIOKafkaConsumer(
        outs["a5"], bootstrap_servers=bootstrap, auto_offset_reset="earliest", **SECURITY
    )
    expected = HOSTS * SECONDS // WINDOW
    counts: dict[tuple[bytes, bytes], tuple[int, int]] = {}
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while len(counts) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            for records in batch.values():
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
            f"{len(counts):,} of {expected:,} windows, {short:,} with fewer than 5 samples, "
            f"{dead:,} dead letters"
        )


def throughput_run(
    bootstrap: str,
    connect: dict[str, str] | None = None,
    attach: Callable[[int], Callable[[], None]] | None = None,
    *,
    sketches: bool = True,
) -> Run | Shortfall:
    """One backlog drained: its figures, or the `Shortfall` that disqualifies it. `connect`:
    how the worker reaches the broker, if not as the benchmark's clients do. `attach` is
    called with the worker's pid as it starts (a profiler) and returns what to call once
    the timed part is over. `sketches`: the worker keeps quantile sketches (the default)."""
    raw, outs, env = _topics(uuid.uuid4().hex[:8])
    env["FLEETPULSE_STREAM_SKETCHES"] = "true" if sketches else "false"
    fill(bootstrap, raw)
    asyncio.run(
        create_topics(
            KafkaSettings(kafka_bootstrap=bootstrap),
            [TopicSpec(n, 6, 3_600_000) for n in outs.values()],
        )
    )
    # Timed: all 5 s windows but the ones the idle clock closes at the end, (SECONDS/5 - 1)
    # per host; the check then waits for those too.
    target = HOSTS * (SECONDS // WINDOW - 1)
    proc = _start_worker(bootstrap, env, connect=connect)
    detach = attach(proc.pid) if attach else None
    try:
        figures = asyncio.run(_watch(bootstrap, outs["a5"], proc, target))
        if detach:
            detach()
        try:
            asyncio.run(_check(bootstrap, outs))
        except Shortfall as exc:
            return exc
        return figures
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        asyncio.run(drop_topics(bootstrap, _names(raw, outs, env)))


def _quix_closing() -> int:
    """The 5 s windows per server that the backlog's own event time closes in Quix: those
    whose end plus the grace is at or before the server's last sample."""
    return sum(1 for k in range(SECONDS // WINDOW) if (k + 1) * WINDOW + GRACE <= SECONDS - 1)


async def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **SECURITY)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(6)])
    finally:
        await consumer.stop()
    return {tp.partition: n for tp, n in ends.items()}


def _start_quix(
    bootstrap: str, raw: str, outs: dict[str, str], group: str, tmp: Path
) -> subprocess.Popen[bytes]:
    """The Quix app on `raw`, reaching the broker as the benchmark's clients do; its state
    under `tmp`, its stdout in `tmp`/stdout, its log in `tmp`/log."""
    s = KafkaSettings(kafka_bootstrap=bootstrap)
    ends = asyncio.run(_end_offsets(bootstrap, raw))
    args = [
        str(QUIX_PYTHON), str(QUIX_APP), "--bootstrap", bootstrap,
        "--security-protocol", s.kafka_security_protocol,
        "--sasl-mechanism", s.kafka_sasl_mechanism, "--username", s.kafka_sasl_username,
        "--password-file", str(s.kafka_password_path), "--ca-file", str(s.kafka_ca_path),
        "--group", group, "--state-dir", str(tmp / "state"), "--raw", raw,
        "--out-5s", outs["a5"], "--grace-ms", str(GRACE * 1000),
        "--ends", ",".join(f"{p}:{n}" for p, n in sorted(ends.items())),
    ]  # fmt: skip
    if "a1h" in outs:
        args += ["--out-1h", outs["a1h"], "--out-1d", outs["a1d"]]
    if not QUIX_PYTHON.exists():
        raise RuntimeError(f"{QUIX_PYTHON} is missing: run `make bench-setup`")
    with (tmp / "stdout").open("wb") as out, (tmp / "log").open("wb") as log:
        return subprocess.Popen(args, stdout=out, stderr=log, cwd=tmp)


def _consumed(tmp: Path) -> float | None:
    """When the Quix app reported the backlog processed (wall time), if it has."""
    for line in (tmp / "stdout").read_text().splitlines():
        if line.startswith("consumed "):
            return float(line.split()[1])
    return None


def _log_tail(tmp: Path, lines: int = 5) -> str:
    """The last lines of the Quix app's log, on one line."""
    tail = (tmp / "log").read_text(errors="replace").splitlines()[-lines:]
    return " | ".join(line.strip() for line in tail) or "(empty)"


async def _check_quix(
    bootstrap: str,
    outs: dict[str, str],
    raw: Backlog,
    proc: subprocess.Popen[bytes],
    timeout: float = 120,
) -> None:
    """Read Quix's output back until every window of the backlog is there: each 5 s, hourly
    and daily window of each server must hold exactly the samples of its span, and validate
    as a `WindowAggregate`. The closing samples' own windows are left out. Gives up early if
    `proc` (the app) exits. Raises `Shortfall` with what is missing."""
    sizes = {"a5": WINDOW, "a1h": Resolution.ONE_HOUR.seconds, "a1d": Resolution.ONE_DAY.seconds}
    span = range(raw.start, raw.start + SECONDS)
    expected = {outs[k]: Counter(t // sizes[k] * sizes[k] for t in span) for k in outs}
    want = HOSTS * sum(len(c) for c in expected.values())
    got: dict[tuple[str, str, int], int] = {}
    consumer = AIOKafkaConsumer(
        *outs.values(), bootstrap_servers=bootstrap, auto_offset_reset="earliest", **SECURITY
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            if not batch and proc.poll() is not None:
                break
            for records in batch.values():
                for r in records:
                    w = WindowAggregate.model_validate_json(r.value)
                    start = int(w.window_start.timestamp())
                    if start < span.stop:
                        got[(r.topic, str(w.server_id), start)] = w.count
    finally:
        await consumer.stop()
    problems = []
    for key, topic in outs.items():
        mine = {k: n for k, n in got.items() if k[0] == topic}
        wrong = sum(1 for (_, _, start), n in mine.items() if expected[topic][start] != n)
        need = HOSTS * len(expected[topic])
        if len(mine) != need or wrong:
            problems.append(f"{key}: {len(mine):,} of {need:,} windows, {wrong:,} miscounted")
    if problems:
        raise Shortfall("; ".join(problems))


def quix_run(bootstrap: str, rollups: bool) -> Run | Shortfall:
    """Quix Streams through a backlog of its own, as `throughput_run` (5 s windows, and with
    `rollups` hourly and daily ones too): its figures, or the `Shortfall` that disqualifies
    it."""
    tag = uuid.uuid4().hex[:8]
    outs = {k: f"bench.quix.{k}.{tag}" for k in ("a5", "a1h", "a1d")[: 3 if rollups else 1]}
    group = f"bench-quix-{tag}"
    raw = fill(bootstrap, f"bench.raw.{tag}")
    # Quix stamps a window's record with the window's start: the backlog's are an hour old,
    # the closing samples' two days ahead, which the broker would delete (1 h retention, as
    # ours) or refuse (it takes at most 1 h ahead by default).
    outer = {"message.timestamp.after.max.ms": str(3 * Resolution.ONE_DAY.seconds * 1000)}
    specs = [TopicSpec(n, 6, 7 * 86_400_000, extra_config=outer) for n in outs.values()]
    asyncio.run(create_topics(KafkaSettings(kafka_bootstrap=bootstrap), specs))
    with tempfile.TemporaryDirectory(prefix="bench-quix-") as name:
        tmp = Path(name)
        proc = _start_quix(bootstrap, raw.topic, outs, group, tmp)
        try:
            target = HOSTS * _quix_closing()
            try:
                figures = asyncio.run(
                    _watch(bootstrap, outs["a5"], proc, target, lambda: _consumed(tmp))
                )
            except RuntimeError as exc:
                return Shortfall(f"{exc}; the Quix app's log ends: {_log_tail(tmp)}")
            # Two more samples per server: the first closes the backlog's 5 s windows, the
            # second closes the first's, whose start moves the cascade's time past the
            # backlog's hour and day.
            later = raw.start + 2 * Resolution.ONE_DAY.seconds
            asyncio.run(_fill(bootstrap, raw.topic, [later, later + WINDOW + GRACE]))
            try:
                asyncio.run(_check_quix(bootstrap, outs, raw, proc))
            except Shortfall as exc:
                if proc.poll() is not None:
                    return Shortfall(f"{exc}; the Quix app exited: {_log_tail(tmp)}")
                return exc
            return figures
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            asyncio.run(_drop_with_group(bootstrap, [raw.topic, *outs.values()], group))


async def _drop_with_group(bootstrap: str, names: list[str], group: str) -> None:
    """`drop_topics` of `names` and of the topics Quix made for `group` (changelogs)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **SECURITY)
    await admin.start()
    try:
        made = [n for n in await admin.list_topics() if group in n]
    finally:
        await admin.close()
    await drop_topics(bootstrap, [*names, *made])


async def _simulate(bootstrap: str, topic: str, hosts: int, seconds: float) -> None:
    """The live load; prints the seconds it skipped for being behind (0 on a valid run)."""
    settings = SimulatorSettings(kafka_bootstrap=bootstrap, hosts=hosts)
    sim = Simulator(settings, MetricProducer(settings, topic=topic))
    await sim.start()
    try:
        stats = await sim.emit(seconds)
    finally:
        await sim.close()
    print(stats.ticks_skipped)


async def _delays(bootstrap: str, outs: dict[str, str], since: float) -> list[float]:
    """Each 5 s window's delay from `since` on, after checking the run's output: every window
    before the last one holds all `LIVE_HOSTS` servers with 5 samples, and the DLQ is empty.
    Raises `Shortfall` otherwise."""
    consumer = AIOKafkaConsumer(
        outs["a5"], bootstrap_servers=bootstrap, auto_offset_reset="earliest", **SECURITY
    )
    await consumer.start()
    delays: list[float] = []
    counts: dict[tuple[str, float], int] = {}
    first = math.ceil(since / WINDOW) * WINDOW  # the first window that starts after `since`
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=2000)
            if not batch:
                break
            for records in batch.values():
                for r in records:
                    agg = WindowAggregate.model_validate_json(r.value)
                    start = agg.window_start.timestamp()
                    if start >= first:  # not the start-up windows
                        delays.append((agg.emitted_at - agg.window_end).total_seconds())
                        key = (str(agg.server_id), start)
                        counts[key] = max(counts.get(key, 0), agg.count)
        dead = await _count(consumer, outs["dlq"])
    finally:
        await consumer.stop()
    # Every window but the last one out (the simulator's end cuts it short) is whole.
    last = max(t for _, t in counts)
    short = sorted({t for (_, t), n in counts.items() if n != WINDOW and t < last})
    expected = LIVE_HOSTS * (int(last) - first) // WINDOW
    complete = sum(1 for (_, t), n in counts.items() if n == WINDOW and t < last)
    if complete != expected or dead:
        raise Shortfall(
            f"{complete:,} of {expected:,} live windows complete (short: "
            f"{', '.join(f'+{t - first:.0f} s' for t in short) or 'none'}), "
            f"{dead:,} dead letters"
        )
    return delays


def delay_run(
    bootstrap: str, code: Path = ROOT, connect: dict[str, str] | None = None
) -> list[float]:
    """One live run against the worker from `code`: the delays of its checked output."""
    raw, outs, env = _topics(uuid.uuid4().hex[:8])
    specs = [TopicSpec(n, 6, 3_600_000) for n in (raw, *outs.values())]
    asyncio.run(create_topics(KafkaSettings(kafka_bootstrap=bootstrap), specs))
    proc = _start_worker(bootstrap, env, code, connect)
    try:
        time.sleep(5)  # joined and consuming
        since = time.time() + 10
        sim = subprocess.run(
            [sys.executable, "-m", "benchmarks.stream", "simulate", bootstrap, raw],
            capture_output=True,
            text=True,
            timeout=LIVE_SECONDS + 60,
        )
        skipped = int(sim.stdout.split()[-1]) if sim.stdout.split() else -1
        if sim.returncode or skipped:
            raise Shortfall(f"the simulator fell behind or failed (skipped seconds: {skipped})")
        time.sleep(12)  # the last windows close by the idle clock
        return asyncio.run(_delays(bootstrap, outs, since))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        asyncio.run(drop_topics(bootstrap, _names(raw, outs, env)))


def _live(
    bootstrap: str, codes: dict[str, Path], runs: int, connect: dict[str, str] | None = None
) -> dict[str, list[list[float]]]:
    """`runs` live runs of each code, alternating; per code the delays of its complete runs
    (a run that lost a window is reported and left out, never averaged in)."""
    results: dict[str, list[list[float]]] = {label: [] for label in codes}
    for i in range(runs):
        for label, code in codes.items():
            try:
                d = delay_run(bootstrap, code, connect)
            except Shortfall as exc:
                print(f"run {i + 1}/{runs} {label}: FAILED: {exc}", file=sys.stderr, flush=True)
                continue
            results[label].append(d)
            print(
                f"run {i + 1}/{runs} {label}: p50 {percentile(d, 0.5):.2f} s, "
                f"p99 {percentile(d, 0.99):.2f} s, {len(d):,} windows",
                file=sys.stderr,
                flush=True,
            )
    return results


def delay_compare(runs: int, against: str | None) -> str:
    """The live delay alone, `runs` times, alternating with the worker of revision `against`
    (the baseline, measured in the same session) when given."""
    from benchmarks.tls import plaintext_listener

    settings = stack_up()
    codes = {f"`{head()}` (this tree)": ROOT}
    note = ""
    if against:
        codes[f"`{against}`"] = checkout(settings, against)
        # A revision from before TLS reaches the broker only in plaintext: both workers do,
        # so the comparison is of the code alone.
        with plaintext_listener() as (settings, plain):
            results = _live(settings.kafka_bootstrap, codes, runs, plain)
        note = " Both workers reach the broker through a plaintext listener opened for it."
    else:
        results = _live(settings.kafka_bootstrap, codes, runs)
    lines = [
        f"Delay, live, {LIVE_HOSTS:,} hosts at 1 Hz for {LIVE_SECONDS} s; runs alternate "
        "between the revisions; medians over the complete runs, range in brackets." + note,
        "",
        "| Code | Runs complete | p50, s | p99, s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, live in results.items():
        cells = [
            f"{median(v):.2f} ({min(v):.2f} to {max(v):.2f})"
            for v in ([percentile(d, q) for d in live] for q in (0.50, 0.99))
            if v
        ] or ["n/a", "n/a"]
        lines.append(f"| {label} | {len(live)} of {runs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def catch_up(runs: int) -> int:
    """The catch-up check alone, `runs` times; prints each run's verdict; 1 if any fell short."""
    settings = stack_up()
    failed = 0
    for i in range(runs):
        result = throughput_run(settings.kafka_bootstrap)
        if isinstance(result, Shortfall):
            failed += 1
            print(f"run {i + 1}/{runs}: FAILED: {result}", flush=True)
        else:
            print(
                f"run {i + 1}/{runs}: complete ({HOSTS * SECONDS // WINDOW:,} windows of "
                f"{WINDOW} samples, DLQ empty), {result.sustained:,.0f} events/s sustained, "
                f"worker {result.cpu:.0f} % of a core",
                flush=True,
            )
    print(f"{runs - failed} of {runs} catch-ups complete")
    return 1 if failed else 0


#: The label of our worker's runs with its quantile sketches off (the rollups' percentiles).
SKETCHES_OFF = "FleetPulse, sketches off"
#: What a throughput comparison runs: label → one run.
Jobs = dict[str, Callable[[], Run | Shortfall]]


def throughput_jobs(bootstrap: str) -> Jobs:
    """Our worker and Quix in each configuration, each through a backlog of its own."""
    jobs: Jobs = {
        "FleetPulse": lambda: throughput_run(bootstrap),
        SKETCHES_OFF: lambda: throughput_run(bootstrap, sketches=False),
    }
    for label, rollups in QUIX_CONFIGS.items():
        jobs[f"Quix, {label}"] = partial(quix_run, bootstrap, rollups)
    return jobs


def interleaved(jobs: Jobs, runs: int) -> dict[str, list[Run | Shortfall]]:
    """`runs` rounds of every job, the order rotating from round to round (so no job always
    follows the same one); prints each run's verdict."""
    results: dict[str, list[Run | Shortfall]] = {label: [] for label in jobs}
    labels = list(jobs)
    for i in range(runs):
        for label in labels[i % len(labels) :] + labels[: i % len(labels)]:
            result = jobs[label]()
            results[label].append(result)
            verdict = (
                f"FAILED: {result}"
                if isinstance(result, Shortfall)
                else f"complete, {result.sustained:,.0f} events/s sustained"
            )
            print(f"run {i + 1}/{runs} {label}: {verdict}", file=sys.stderr, flush=True)
    return results


#: The rows of the Quix table: label, `Run` field, format.
_QUIX_ROWS = (
    ("Events/s sustained (10 % to 90 % of its 5 s windows)", "sustained", "{:,.0f}"),
    ("Events/s overall, to the backlog's last record processed", "overall", "{:,.0f}"),
    ("Process start to first window out, s", "startup", "{:.1f}"),
    ("CPU, % of one core", "cpu", "{:.0f}"),
    ("Peak RSS, MiB", "rss", "{:.0f}"),
)


def _cells(runs: list[Run], field: str, fmt: str) -> list[str]:
    """Median and range of `field` over `runs`, as two table cells."""
    values: list[float] = [getattr(r, field) for r in runs]
    if not values:
        return ["n/a", ""]
    return [fmt.format(median(values)), f"{fmt.format(min(values))} to {fmt.format(max(values))}"]


def _ratio(ours: list[Run], theirs: list[Run], field: str) -> str:
    """Our median of `field` over theirs."""
    if not ours or not theirs:
        return "n/a"
    mine, other = ([getattr(r, field) for r in rs] for rs in (ours, theirs))
    return f"{median(mine) / median(other):.2f}"


def _quix_section(results: dict[str, list[Run | Shortfall]]) -> list[str]:
    """The Quix part of the section: its table, and our sustained and overall rates over
    its, per configuration."""
    ours = [r for r in results["FleetPulse"] if isinstance(r, Run)]
    quix = {label: results[f"Quix, {label}"] for label in QUIX_CONFIGS}
    done = {label: [r for r in rs if isinstance(r, Run)] for label, rs in quix.items()}
    failures = [f"{label}: {r}" for label, rs in quix.items() for r in rs if not isinstance(r, Run)]
    lines = [
        "| Measure | " + " | ".join(f"Quix, {label}: median | Range" for label in quix) + " |",
        "| --- |" + " ---: | ---: |" * len(quix),
    ]
    for name, field, fmt in _QUIX_ROWS:
        cells = [c for label in quix for c in _cells(done[label], field, fmt)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ratios = "; ".join(
        f"{label}: {_ratio(ours, done[label], 'sustained')} sustained, "
        f"{_ratio(ours, done[label], 'overall')} overall"
        for label in quix
    )
    passed = ", ".join(f"{len(done[label])} of {len(quix[label])} ({label})" for label in quix)
    closing = _quix_closing()
    return [
        "Quix Streams 3.28.1 (`benchmarks/quix/app.py`), doing the same work as far as Quix "
        "allows, through identical backlogs (each run its own raw topic), its runs "
        "interleaved with ours (the order rotating): keyed by server, in event time (a "
        "timestamp extractor reads the event's `timestamp`), "
        f"{WINDOW} s tumbling windows with the same {GRACE} s grace, closed per server "
        "(`final()`), reduced to what ours keeps (count; sum, min, max and latest of cpu, "
        "memory and disk; byte sums; the latest process list) and written as "
        "`WindowAggregate` JSON; in the second configuration hourly and daily windows are "
        "cascaded from the closed 5 s windows, as ours are. RocksDB state with changelog "
        "topics, commits every 2 s. It parses the JSON but validates nothing: Quix has no "
        "pydantic models (its JSON deserializer could check a JSON Schema; not done here), "
        "where ours checks every field's type and range.",
        "",
        "Timed as ours, but for two differences. Quix closes a window only once its server's "
        "event time passes the window's end plus the grace, so the backlog alone closes "
        f"{closing} of each server's {SECONDS // WINDOW} windows of {WINDOW} s "
        f"({HOSTS * closing:,}: the timed part) and no hour or day; and its overall rate "
        "runs to its own report of having processed the backlog's last record. Every run's "
        "output checked first: after the timed part, two more samples per server (two days "
        "on, and 10 s later) close every window of the backlog; then all "
        f"{HOSTS * SECONDS // WINDOW:,} 5 s windows with {WINDOW} samples each and, when "
        "configured, every hourly and daily window holding exactly its samples must be "
        "there, each a valid `WindowAggregate`. Runs passed: "
        + passed
        + (f" (failed: {'; '.join(failures)})." if failures else "."),
        "",
        *lines,
        "",
        f"FleetPulse ÷ Quix, medians (ours runs all three resolutions in each run): {ratios}.",
        "",
    ]


def _sketch_cost(results: dict[str, list[Run | Shortfall]]) -> str:
    """The sentence on what the quantile sketches cost, from the runs without them."""
    on = [r.sustained for r in results["FleetPulse"] if isinstance(r, Run)]
    off = [r.sustained for r in results[SKETCHES_OFF] if isinstance(r, Run)]
    failed = [str(r) for r in results[SKETCHES_OFF] if isinstance(r, Shortfall)]
    if not off:
        return f"Sketches off: every run lost data ({'; '.join(failed)})."
    ratio = median(on) / median(off)
    return (
        "The figures above keep a quantile sketch of each metric per window (the hourly and "
        "daily p50 to p99). In the same rounds, with `FLEETPULSE_STREAM_SKETCHES=false` "
        f"({len(off)} of {len(results[SKETCHES_OFF])} runs complete): "
        f"{median(off):,.0f} events/s sustained (range {min(off):,.0f} to {max(off):,.0f}); "
        f"with sketches ÷ without: {ratio:.2f}, "
        + (
            "within the 15 % the sketches may cost."
            if ratio >= 0.85
            else "more than the 15 % the sketches may cost."
        )
    )


def quix_only(runs: int) -> int:
    """Only the Quix runs, `runs` rounds; prints each run's verdict; 1 if any fell short."""
    settings = stack_up()
    jobs = throughput_jobs(settings.kafka_bootstrap)
    del jobs["FleetPulse"], jobs[SKETCHES_OFF]
    results = interleaved(jobs, runs)
    return 1 if any(isinstance(r, Shortfall) for rs in results.values() for r in rs) else 0


def run() -> str:
    settings = stack_up()
    results = interleaved(throughput_jobs(settings.kafka_bootstrap), RUNS)
    runs = [r for r in results["FleetPulse"] if isinstance(r, Run)]
    failures = [str(r) for r in results["FleetPulse"] if isinstance(r, Shortfall)]
    if not runs:
        raise RuntimeError(f"every stream run lost data: {'; '.join(failures)}")
    live = _live(settings.kafka_bootstrap, {"this tree": ROOT}, 3)["this tree"]
    if not live:
        raise RuntimeError("every live stream run lost data")
    sustained = [r.sustained for r in runs]
    p50 = [percentile(d, 0.50) for d in live]
    p99 = [percentile(d, 0.99) for d in live]
    return "\n".join(
        [
            "## Stream worker",
            "",
            f"Throughput: one `fleetpulse stream` worker through a backlog of {EVENTS:,} raw "
            f"events ({HOSTS:,} hosts x {SECONDS} s, ~400 bytes each) on 6 partitions, all "
            f"three resolutions, checkpoints every 2 s; {RUNS} runs. The broker runs on the "
            "same 2 cores. Every run's output checked first: all "
            f"{HOSTS * SECONDS // WINDOW:,} windows with {WINDOW} samples each, DLQ empty; "
            f"{len(runs)} of {RUNS} runs passed"
            + (f" (failed: {'; '.join(failures)})." if failures else "."),
            "",
            "| Measure | Median | Range |",
            "| --- | ---: | ---: |",
            row("Events/s sustained (10 % to 90 % of the backlog)", sustained, "{:,.0f}"),
            row("Events/s overall, from process start", [r.overall for r in runs], "{:,.0f}"),
            row("Process start to first window out, s", [r.startup for r in runs], "{:.1f}"),
            row("Worker CPU, % of one core", [r.cpu for r in runs], "{:.0f}"),
            row("Worker peak RSS, MiB", [r.rss for r in runs], "{:.0f}"),
            "",
            _sketch_cost(results),
            "",
            f"Target {TARGET:,} events/s per worker process, sketches on: "
            + ("met" if median(sustained) >= TARGET else "not met")
            + ". For reference, on this kind of machine "
            "a stateless Faust agent ran at about 13,000 events/s and Faust's own 5 s windowed "
            "table at about 4,000; this worker reads raw batches with aiokafka inside the Faust "
            "runtime (a Faust agent with the same windowing ran at about 2,500 events/s here).",
            "",
            *_quix_section(results),
            f"Delay, live: {LIVE_HOSTS:,} simulated hosts at 1 Hz for {LIVE_SECONDS} s into a "
            "worker that keeps up; per 5 s window, `emitted_at - window_end` "
            f"({sum(len(d) for d in live):,} windows over {len(live)} complete runs of 3; each "
            "checked first: every window whole, DLQ empty). A window closes when its "
            "server's event time passes its end plus the 5 s grace, so about 5 s of the "
            "delay is the grace itself.",
            "",
            "| Measure | Median | Range |",
            "| --- | ---: | ---: |",
            row("Window end to emission, p50, s", p50, "{:.2f}"),
            row("Window end to emission, p99, s", p99, "{:.2f}"),
            f"| Windows per run | {median([len(d) for d in live]):,.0f} | |",
            "",
        ]
    )


def main() -> None:
    if sys.argv[1:2] == ["simulate"]:
        asyncio.run(_simulate(sys.argv[2], sys.argv[3], LIVE_HOSTS, LIVE_SECONDS))
        return
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.stream",
        description="The stream benchmark (no argument), or only some of it.",
    )
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser(
        "catch-up",
        help=f"drain a {EVENTS:,}-event 6-partition backlog N times; check every window",
    )
    check.add_argument("--runs", type=int, default=20, help="how many catch-ups (default 20)")
    quix = sub.add_parser(
        "quix", help="only Quix Streams through the backlog, in both configurations, N times"
    )
    quix.add_argument("--runs", type=int, default=RUNS, help=f"rounds (default {RUNS})")
    delay = sub.add_parser(
        "delay", help="the live window-end-to-emission delay alone, against a baseline revision"
    )
    delay.add_argument("--runs", type=int, default=5, help="runs per revision (default 5)")
    delay.add_argument("--against", metavar="REV", help="also run this git revision (baseline)")
    args = parser.parse_args()
    if args.command == "catch-up":
        sys.exit(catch_up(args.runs))
    if args.command == "quix":
        sys.exit(quix_only(args.runs))
    if args.command == "delay":
        print(delay_compare(args.runs, args.against))
        return
    print(run())


if __name__ == "__main__":
    main()
