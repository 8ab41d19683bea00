"""End to end: N simulated hosts at 1 Hz through the whole pipeline, everything on this machine.

Each component runs as its own process, as an operator runs it: `fleetpulse simulate` → raw
topic → `fleetpulse stream` → aggregate topics → `fleetpulse sink` → PostgreSQL, and
`fleetpulse registry` following the status topic; the broker and PostgreSQL share the same
cores. Every run has topics and consumer groups of its own; all runs use one benchmark
database whose `metrics_snapshots` has one extra column, `landed_at DEFAULT clock_timestamp()`,
stamped as the sink's upsert inserts the row (inside its transaction, just before the commit).

All processes start together; the simulator runs SECONDS s. Measured are the 5 s windows that
start WARMUP s after the start and end before the simulator stops: their rows (all hosts, every
window, 5 samples each = nothing lost), `landed_at - window_end` (p50, p99), the samples landed
per second, and each component's CPU and memory over that stretch. After the simulator stops
the run waits for the pipeline to drain its backlog (past saturation, windows land later; up
to DRAIN s without progress). A run *lost data* if a measured row is missing or short while
the simulator kept time, or anything was dead-lettered: that is a failure, reported as such
and never averaged in. A run *holds* when it lost nothing, the simulator finished no second
late and dropped nothing, and p99 is at most 3 s.

Grace: a 5 s window closes when its server's event time passes its end plus the grace, so a
row cannot land sooner than the grace after the window's end. The worker's default grace is
5 s (room for hosts whose clocks or links lag); these runs set `FLEETPULSE_GRACE__5S=1`, the
setting for a fleet that wants rows within 3 s, and one reference run keeps the default.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import ssl
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.common import (
    SECURITY,
    WINDOW,
    bench_database,
    drop_database,
    drop_topics,
    median,
    percentile,
    postgres_usage,
    register_servers,
    row,
    stack_up,
)
from benchmarks.simulator import summary
from infra import stack
from infra.db import migrate
from infra.demo import Child, DemoPaths, start_children, stop_children
from infra.settings import StackSettings
from infra.stack.process import free_port
from runtime.topics import create_topics
from schemas import RESOLUTIONS
from schemas.resolutions import BASE
from schemas.topics import AGG_1D, AGG_1H, AGG_5S, DLQ, RAW, STATUS, TopicSpec

SEED = 7
SECONDS = 60
DRAIN = 60  # s without a new complete row before a run's wait for its rows ends
WARMUP = 15
GRACE = 1.0
DEFAULT_GRACE = 5.0
TARGET_HOSTS = 5_000
TARGET_P99 = 3.0
RUNS = 3
#: Fleet sizes tried after the target, one run each, up to the first that does not hold.
LADDER = (7_500, 10_000, 12_500, 15_000, 17_500, 20_000, 22_500, 25_000)
#: The fleet this machine is meant to hold (the performance goal).
GOAL_HOSTS = 25_000
#: One run far past what this machine holds: windows must land late, and complete.
OVERLOAD_HOSTS = 30_000
COMPONENTS = ("simulate", "stream", "sink", "registry", "kafka", "postgres")
LABELS = {
    "simulate": "simulator (`fleetpulse simulate`)",
    "stream": "stream worker",
    "sink": "sink",
    "registry": "registry (status consumer, idle API)",
    "kafka": "Kafka broker (JVM)",
    "postgres": "PostgreSQL (all its processes)",
}


@dataclass
class Result:
    hosts: int
    grace: float
    replicas: int  # stream workers, and as many sinks
    expected: int  # 5 s rows measured: hosts x windows
    rows: int  # of those, landed
    complete: int  # of those, with all 5 samples
    events_per_s: float  # samples landed per second of measured windows
    p50: float
    p99: float
    late_seconds: float
    dropped: float
    dead_letters: int
    busy: float  # whole machine, % of all cores
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core
    memory: dict[str, float] = field(default_factory=dict)  # peak MiB

    @property
    def on_time(self) -> bool:
        """The simulator produced every sample (no second late or skipped, nothing dropped)."""
        return self.late_seconds == 0 and self.dropped == 0

    @property
    def lost_data(self) -> bool:
        """Rows missing or short although every sample was produced, or dead letters."""
        incomplete = not (self.rows == self.expected == self.complete)
        return self.dead_letters > 0 or (incomplete and self.on_time)

    @property
    def holds(self) -> bool:
        return (
            not self.lost_data
            and self.on_time
            and self.rows == self.expected == self.complete
            and self.p99 <= TARGET_P99
        )

    @property
    def verdict(self) -> str:
        if self.lost_data:
            return "no: LOST DATA"
        if not self.on_time:
            return "no: simulator behind"
        return "yes" if self.holds else "no: p99"


class Meter:
    """CPU seconds and peak memory per component (the sum over its processes). PostgreSQL
    counts the postmaster, its live backends and the CPU of those it has reaped; its memory is
    the sum of proportional set sizes (shared buffers counted once). Others: resident set size."""

    def __init__(self, procs: dict[str, list[psutil.Process]]) -> None:
        self.procs = procs
        self.peak = dict.fromkeys(procs, 0.0)

    def sample(self) -> dict[str, float]:
        cpu: dict[str, float] = {}
        for name, procs in self.procs.items():
            seconds = mem = 0.0
            for proc in procs:
                try:
                    if name == "postgres":
                        s, m = postgres_usage(proc)
                    else:
                        t = proc.cpu_times()
                        s, m = t.user + t.system, proc.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                seconds += s
                mem += m
            cpu[name] = seconds
            self.peak[name] = max(self.peak[name], mem / 2**20)
        return cpu


def _topics(tag: str) -> tuple[list[TopicSpec], dict[str, str]]:
    """Topics of one run, partitioned like the real ones, and the variables that name them."""
    real = {"RAW": RAW, "AGG_5S": AGG_5S, "AGG_1H": AGG_1H, "AGG_1D": AGG_1D}
    real |= {"STATUS": STATUS, "DLQ": DLQ}
    names = {var: f"bench.e2e.{spec.name}.{tag}" for var, spec in real.items()}
    specs = [TopicSpec(names[var], spec.partitions, 3_600_000) for var, spec in real.items()]
    return specs, {f"FLEETPULSE_{var}_TOPIC": name for var, name in names.items()}


async def _prepare(settings: StackSettings, hosts: int) -> str:
    """The benchmark database: migrated, `landed_at` added, every simulated host registered."""
    name = await bench_database(settings)
    conn = await asyncpg.connect(**settings.connect_kwargs(database=name))
    try:
        await migrate(conn, storage="postgres")
        await conn.execute(
            f"ALTER TABLE {BASE.table} ADD COLUMN landed_at timestamptz DEFAULT clock_timestamp()"
        )
        await register_servers(conn, SEED, hosts)
    finally:
        await conn.close()
    return name


def _children(paths: DemoPaths, hosts: int, env: dict[str, str], replicas: int) -> list[Child]:
    """The processes of one run; `replicas` stream workers and as many sinks, in their groups."""
    args = {
        "registry": ["registry"],
        **{f"sink-{i}": ["sink"] for i in range(1, replicas + 1)},
        **{f"stream-{i}": ["stream"] for i in range(1, replicas + 1)},
        "simulate": ["simulate", "--hosts", str(hosts), "--seed", str(SEED),
                     "--duration", str(SECONDS)],
    }  # fmt: skip
    # Past saturation the broker takes the events more slowly than the simulator makes them:
    # its stop waits for every one (the default 10 s flush would give up on a backlog).
    flush = {"FLEETPULSE_FLUSH_TIMEOUT": "300", "FLEETPULSE_STOP_TIMEOUT": "330"}
    return [
        Child(n, a, paths.logs / f"bench-e2e-{n}.log", env=env | flush if n == "simulate" else env)
        for n, a in args.items()
    ]


async def _dead_letters(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **SECURITY)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(DLQ.partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def _landed(
    settings: StackSettings, database: str, since: float, until: float, expected: int
) -> list[asyncpg.Record]:
    """The measured rows, once all are in complete, or once DRAIN s pass without one more
    (a pipeline past saturation drains its backlog after the simulator stops)."""
    conn = await asyncpg.connect(**settings.connect_kwargs(database=database))
    bounds = (datetime.fromtimestamp(since, UTC), datetime.fromtimestamp(until, UTC))
    try:
        seen, progress_at = -1, time.monotonic()
        while time.monotonic() - progress_at < DRAIN:
            n = await conn.fetchval(
                f'SELECT count(*) FROM {BASE.table} WHERE "timestamp" >= $1 '
                'AND "timestamp" < $2 AND sample_count = $3',
                *bounds,
                WINDOW,
            )
            if n >= expected:
                break
            if n > seen:
                seen, progress_at = n, time.monotonic()
            await asyncio.sleep(0.5)
        rows: list[asyncpg.Record] = await conn.fetch(
            'SELECT extract(epoch FROM landed_at - "timestamp")::float8 - $3 AS delay, '
            f'sample_count FROM {BASE.table} WHERE "timestamp" >= $1 AND "timestamp" < $2',
            *bounds,
            float(WINDOW),
        )
        return rows
    finally:
        await conn.close()


def landed_rows(
    settings: StackSettings,
    database: str,
    env: dict[str, str],
    hosts: int,
    since: int,
    until: int,
) -> tuple[int, list[asyncpg.Record], int]:
    """The rows a run must have landed for the windows in [since, until): how many, those
    that landed, and the dead letters of its DLQ topic."""
    expected = hosts * (until - since) // WINDOW
    rows = asyncio.run(_landed(settings, database, since, until, expected))
    dead = asyncio.run(_dead_letters(settings.kafka_bootstrap, env["FLEETPULSE_DLQ_TOPIC"]))
    return expected, rows, dead


def stop_run(
    settings: StackSettings, children: list[Child], env: dict[str, str], topics: dict[str, str]
) -> dict[str, int]:
    """Stop a run's processes (their exit statuses), drop its topics and changelog."""
    codes = stop_children(children)
    changelog = f"{env['FLEETPULSE_STREAM_GROUP']}-rollups-changelog"
    asyncio.run(drop_topics(settings.kafka_bootstrap, [*topics.values(), changelog]))
    return codes


async def _truncate(settings: StackSettings, database: str) -> None:
    conn = await asyncpg.connect(**settings.connect_kwargs(database=database))
    try:
        await conn.execute(f"TRUNCATE {', '.join(r.table for r in RESOLUTIONS)}")
    finally:
        await conn.close()


def _wait_healthy(port: int, child: Child, ca: Path, timeout: float = 60) -> None:
    """Until the registry answers /health: over HTTPS verified against `ca` (the stack's CA,
    which issued its certificate), or over plain HTTP (a baseline revision from before the
    registry served HTTPS by default)."""
    verify = ssl.create_default_context(cafile=ca)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc is not None and child.proc.poll() is not None:
            raise RuntimeError(f"the registry exited; see {child.log_path}")
        for scheme in ("https", "http"):
            url = f"{scheme}://127.0.0.1:{port}/health"
            try:
                if httpx.get(url, timeout=2, verify=verify).status_code == 200:
                    return
            except httpx.TransportError:
                pass
        time.sleep(0.3)
    raise RuntimeError(f"the registry did not answer within {timeout:.0f} s")


def one_run(
    settings: StackSettings,
    database: str,
    hosts: int,
    grace: float,
    replicas: int = 1,
    connect: dict[str, str] | None = None,
) -> Result:
    """One run of the pipeline; `connect` overrides how its services reach the broker."""
    tag = uuid.uuid4().hex[:8]
    specs, topic_env = _topics(tag)
    asyncio.run(create_topics(settings, specs))
    asyncio.run(_truncate(settings, database))
    port = free_port()
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    env = {
        **topic_env,
        "FLEETPULSE_PG_DATABASE": database,
        "FLEETPULSE_STREAM_GROUP": f"bench-e2e-stream-{tag}",
        "FLEETPULSE_SINK_GROUP": f"bench-e2e-sink-{tag}",
        "FLEETPULSE_REGISTRY_GROUP": f"bench-e2e-registry-{tag}",
        "FLEETPULSE_REGISTRY_PORT": str(port),
        "FLEETPULSE_REGISTRY_KEYS": f"1:{key}",
        "FLEETPULSE_GRACE__5S": str(grace),
        "FLEETPULSE_METRICS_PORT": "0",
        **(connect or {}),
    }
    paths = DemoPaths(settings.home_dir / "bench")
    children = _children(paths, hosts, env, replicas)
    services = {s.name: s.pid for s in stack.status(settings) if s.pid is not None}
    start = time.time()
    start_children(children, paths)
    try:
        by_name = {c.name: c for c in children}
        procs: dict[str, list[psutil.Process]] = {n: [] for n in COMPONENTS}
        for c in children:
            if c.proc is not None:
                procs[c.name.split("-")[0]].append(psutil.Process(c.proc.pid))
        for name, pid in services.items():
            procs[name].append(psutil.Process(pid))
        meter = Meter(procs)
        _wait_healthy(port, by_name["registry"], settings.home_dir / "tls" / "ca.crt")
        sim = by_name["simulate"].proc
        assert sim is not None
        first: tuple[float, dict[str, float], float] | None = None
        last: tuple[float, dict[str, float], float] | None = None
        while sim.poll() is None:
            cpu = meter.sample()
            t = psutil.cpu_times()
            now = (time.monotonic(), cpu, t.user + t.system + t.nice + t.irq + t.softirq)
            if time.time() >= start + WARMUP:
                first = first or now
                last = now
            for c in children:
                if c.proc is not None and c.proc.poll() not in (None, 0):
                    raise RuntimeError(f"{c.name} exited ({c.proc.returncode}); see {c.log_path}")
            time.sleep(1.0)
        if sim.returncode != 0 or first is None or last is None or last[0] - first[0] < 10:
            raise RuntimeError(f"the simulator failed; see {by_name['simulate'].log_path}")
        counts = summary(by_name["simulate"].log_path.read_text())
        since = (int(start + WARMUP) // WINDOW + 1) * WINDOW
        until = int(start + SECONDS) // WINDOW * WINDOW
        expected, rows, dead = landed_rows(settings, database, env, hosts, since, until)
    finally:
        codes = stop_run(settings, children, env, topic_env)
    if any(code != 0 for code in codes.values()):
        raise RuntimeError(f"a component did not stop cleanly: {codes}; logs in {paths.logs}")
    delays = [r["delay"] for r in rows] or [float("inf")]
    wall = last[0] - first[0]
    return Result(
        hosts=hosts,
        grace=grace,
        replicas=replicas,
        expected=expected,
        rows=len(rows),
        complete=sum(1 for r in rows if r["sample_count"] == WINDOW),
        events_per_s=sum(r["sample_count"] for r in rows) / (until - since),
        p50=percentile(delays, 0.50),
        p99=percentile(delays, 0.99),
        late_seconds=counts["late"],
        dropped=counts["dropped"],
        dead_letters=dead,
        busy=100 * (last[2] - first[2]) / wall / (os.cpu_count() or 1),
        cpu={n: 100 * (last[1][n] - first[1][n]) / wall for n in COMPONENTS},
        memory=dict(meter.peak),
    )


def _say(r: Result) -> None:
    print(
        f"  {r.hosts:,} hosts, grace {r.grace:g} s, {r.replicas} worker(s) + sink(s): "
        f"{r.events_per_s:,.0f} events/s, "
        f"rows {r.complete:,}/{r.expected:,} complete, p50 {r.p50:.2f} s, p99 {r.p99:.2f} s, "
        f"{r.dead_letters} dead letters, machine {r.busy:.0f} % busy: holds {r.verdict}",
        file=sys.stderr,
        flush=True,
    )


def _report(target: list[Result], reference: Result, ladder: list[Result], overload: Result) -> str:
    def largest(replicas: int) -> str:
        held = [r.hosts for r in [*target, *ladder] if r.holds and r.replicas == replicas]
        return f"**{max(held):,}** hosts" if held else "none of the sizes tried"

    kept = [r for r in target if not r.lost_data]
    failed = len(target) - len(kept)
    if not kept:
        raise RuntimeError("every end-to-end run at the target size lost data")
    target = kept
    lines = [
        "## End to end",
        "",
        f"Everything on this machine, each component its own process: `fleetpulse simulate` "
        f"(N hosts at 1 Hz) → Kafka → `fleetpulse stream` → `fleetpulse sink` → PostgreSQL, "
        f"and `fleetpulse registry` following the status topic; default partition counts. "
        f"Each run: {SECONDS} s of simulation; measured are the 5 s windows from {WARMUP} s "
        "after start to the simulator's end: every host's row must land complete, with "
        f"`landed_at` (a `clock_timestamp()` default on `{BASE.table}`, in the sink's "
        f"transaction) at most {TARGET_P99:g} s after the window's end at p99. Window grace "
        f"`FLEETPULSE_GRACE__5S={GRACE:g}` (the default 5 s would add 4 s to every delay; see "
        "the reference row).",
        "",
        f"Target: {TARGET_HOSTS:,} hosts, {len(target)} runs that lost nothing"
        + (f" ({failed} more lost data: failed, not counted)." if failed else ".")
        + " Each run's output checked first: every measured row present with its 5 samples, "
        "DLQ empty.",
        "",
        "| Measure | Median | Range |",
        "| --- | ---: | ---: |",
        row("Events/s end to end (samples landed per second)",
            [r.events_per_s for r in target], "{:,.0f}"),
        row("Window end to row in PostgreSQL, p50, s", [r.p50 for r in target], "{:.2f}"),
        row("Window end to row in PostgreSQL, p99, s", [r.p99 for r in target], "{:.2f}"),
        row("Rows landed complete, % of expected",
            [100 * r.complete / r.expected for r in target], "{:.1f}"),
        row("Simulator seconds late + events dropped + dead letters",
            [r.late_seconds + r.dropped + r.dead_letters for r in target], "{:.0f}"),
        row("Whole machine busy, % of both cores", [r.busy for r in target], "{:.0f}"),
        "",
        f"Per component at {TARGET_HOSTS:,} hosts (median of the runs):",
        "",
        "| Component | CPU, % of one core | Peak memory, MiB |",
        "| --- | ---: | ---: |",
    ]  # fmt: skip
    for name in COMPONENTS:
        cpu = median([r.cpu[name] for r in target])
        mem = median([r.memory[name] for r in target])
        lines.append(f"| {LABELS[name]} | {cpu:.0f} | {mem:.0f} |")
    lines += [
        "",
        f"Reference, the default grace ({DEFAULT_GRACE:g} s) at {reference.hosts:,} hosts, one "
        f"run: p50 {reference.p50:.2f} s, p99 {reference.p99:.2f} s, "
        f"{reference.events_per_s:,.0f} events/s, rows {reference.complete:,} of "
        f"{reference.expected:,} complete.",
        "",
        "Larger fleets, one run each, up to the first that does not hold; from there on, two "
        "stream workers and two sinks (same groups, sharing the partitions) on the same 2 "
        "cores:",
        "",
        "| Hosts | Workers + sinks | Events/s | p50, s | p99, s | Rows complete "
        "| Late s / dropped / DLQ | Machine busy | Holds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in [median_run(target), *ladder]:
        lines.append(
            f"| {r.hosts:,} | {r.replicas} + {r.replicas} | {r.events_per_s:,.0f} | "
            f"{r.p50:.2f} | {r.p99:.2f} | "
            f"{100 * r.complete / r.expected:.1f} % | {r.late_seconds:.0f} / {r.dropped:.0f} / "
            f"{r.dead_letters} | {r.busy:.0f} % | {r.verdict} |"
        )
    lines += [
        "",
        "Past saturation the pipeline falls behind and windows land later (p99 grows); it "
        "drops nothing for it: a run with a row missing or short (while the simulator kept "
        "time) or a dead letter is marked LOST DATA, a failure. `simulator behind` means the "
        "load generator itself, on the same cores, could not produce every second.",
        "",
        f"Largest fleet that holds: {largest(1)} with one stream worker and one sink; "
        f"{largest(2)} with two of each. Goal: {GOAL_HOSTS:,} hosts, "
        + ("held." if any(r.holds and r.hosts >= GOAL_HOSTS for r in ladder) else "not held.")
        + saturation(ladder),
        "",
        f"Past saturation, {overload.hosts:,} hosts with one worker and one sink, one run: "
        f"the pipeline falls behind and windows land later (p50 {overload.p50:.1f} s, p99 "
        f"{overload.p99:.1f} s after the window's end; stream worker at "
        f"{overload.cpu['stream']:.0f} % of a core, machine {overload.busy:.0f} % busy); rows "
        f"{overload.complete:,} of {overload.expected:,} complete, {overload.dead_letters} dead "
        f"letters, simulator {'on time' if overload.on_time else 'behind'}: "
        + overload_outcome(overload),
        "",
    ]
    return "\n".join(lines)


def overload_outcome(run: Result) -> str:
    """What the overloaded run lost, and where: the pipeline, or the simulator that could not
    produce every sample on the same cores (its rows are short for that, not the pipeline's
    fault)."""
    if run.lost_data:
        return "LOST DATA."
    if run.on_time:
        return "delayed, nothing dropped."
    return (
        "no dead letter, and the pipeline lost none of what it was given; the simulator, on "
        f"the same cores, ticked {run.late_seconds:,.0f} seconds late and dropped "
        f"{run.dropped:,.0f} events it could not send (the short rows are those)."
    )


def saturation(ladder: list[Result]) -> str:
    """What saturates first: the busiest component of the first run that did not hold."""
    failed = next((r for r in ladder if not r.holds and r.replicas == 1), None)
    if failed is None:
        return ""
    name = max(failed.cpu, key=lambda n: failed.cpu[n])
    return (
        f" First to saturate, at {failed.hosts:,} hosts: the {LABELS[name]} at "
        f"{failed.cpu[name]:.0f} % of a core (machine {failed.busy:.0f} % busy; "
        + ", ".join(f"{n} {failed.cpu[n]:.0f} %" for n in COMPONENTS if n != name)
        + ")."
    )


def median_run(runs: list[Result]) -> Result:
    """The run with the median p99."""
    return sorted(runs, key=lambda r: r.p99)[len(runs) // 2]


def run() -> str:
    settings = stack_up()
    database = asyncio.run(_prepare(settings, max(*LADDER, OVERLOAD_HOSTS)))
    try:
        print(f"end to end: {TARGET_HOSTS:,} hosts x {RUNS} runs …", file=sys.stderr)
        target = [one_run(settings, database, TARGET_HOSTS, GRACE) for _ in range(RUNS)]
        for r in target:
            _say(r)
        reference = one_run(settings, database, TARGET_HOSTS, DEFAULT_GRACE)
        _say(reference)
        ladder: list[Result] = []
        for replicas in (1, 2):  # past what one worker and one sink hold: two of each
            sizes = [n for n in LADDER if not ladder or n >= ladder[-1].hosts]
            for hosts in sizes:
                ladder.append(one_run(settings, database, hosts, GRACE, replicas))
                _say(ladder[-1])
                if not ladder[-1].holds:
                    break
            else:
                break
        overload = one_run(settings, database, OVERLOAD_HOSTS, GRACE)
        _say(overload)
    finally:
        asyncio.run(drop_database(settings, database))
    return _report(target, reference, ladder, overload)


if __name__ == "__main__":
    print(run())
