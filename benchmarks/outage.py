"""Log lines in a broker outage under load: how much each service writes while Kafka is away.

Each run starts the pipeline as separate processes (`fleetpulse simulate` with HOSTS hosts,
`agent`, `stream`, `sink`, `registry`) on the local stack, stops the Kafka broker OUTAGE s
after the start, starts it again, and lets the pipeline catch up. Counted are the WARNING,
ERROR and CRITICAL lines each process writes from the broker's stop to RECOVERY s after its
return. The run's output is checked first: every 5 s row of the measured stretch must land
with all its samples, nothing be dead-lettered, and every process stop cleanly at the end; a
run that fails that is a failure, never a figure.

`--against REV` runs the same drill on another revision of the code (checked out with
`git worktree` under the stack's home), in the same session, as the baseline.

    python -m benchmarks.outage [--runs N] [--against REV]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import secrets
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from benchmarks.common import (
    ROOT,
    WINDOW,
    bench_database,
    checkout,
    code_env,
    database_env,
    drop_database,
    head,
    median,
    stack_up,
)
from benchmarks.e2e import SEED, _topics, _wait_healthy, landed_rows, stop_run
from infra.db import migrate
from infra.demo import Child, DemoPaths, start_children
from infra.settings import StackSettings
from infra.stack import KafkaCluster
from infra.stack.process import free_port
from producers.simulator import simulated_server_id
from runtime.topics import create_topics

HOSTS = 2_000
WARMUP = 20  # s before the broker stops
OUTAGE = 24  # s the broker is away
RECOVERY = 40  # s after its return that are still counted
SECONDS = WARMUP + OUTAGE + RECOVERY  # the simulator's run
RUNS = 3
_NOISY = re.compile(rb" (WARNING|ERROR|CRITICAL) |\[(WARNING|ERROR|CRITICAL)\]")
_STAMP = re.compile(rb"^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)")


@dataclass
class Outcome:
    lines: dict[str, int]  # per process: warning/error lines during the outage and recovery
    rows: int
    expected: int
    dead_letters: int
    exits: dict[str, int]  # each process's exit status at the end (SIGTERM)

    @property
    def failed(self) -> bool:
        """Lost data (a row missing or short, a dead letter) or a process that crashed."""
        return (
            self.rows < self.expected
            or self.dead_letters > 0
            or any(code != 0 for code in self.exits.values())
        )


def _noisy_lines(path: Path, since: float, until: float) -> int:
    """WARNING/ERROR/CRITICAL lines of a log whose timestamp falls in [since, until]."""
    count = 0
    lo, hi = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)),
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until)),
    )
    stamp = b""
    for line in path.read_bytes().splitlines():
        m = _STAMP.match(line.lstrip(b"["))
        if m:
            stamp = m.group(1).replace(b"T", b" ")
        if _NOISY.search(line) and lo.encode() <= stamp <= hi.encode():
            count += 1
    return count


async def _prepare(settings: StackSettings, agent_id: str) -> str:
    name = await bench_database(settings)
    conn = await asyncpg.connect(**settings.connect_kwargs(database=name))
    try:
        await migrate(conn, storage="postgres")
        await conn.execute(  # what the end-to-end benchmark's row check reads
            "ALTER TABLE metrics_snapshots ADD COLUMN landed_at timestamptz "
            "DEFAULT clock_timestamp()"
        )
        ids = [agent_id, *(simulated_server_id(SEED, i) for i in range(HOSTS))]
        records = [(sid, f"h-{i}", f"h-{i}.bench", 22, "b", "v1:x") for i, sid in enumerate(ids)]
        columns = ["id", "name", "hostname", "port", "username", "encrypted_password"]
        await conn.copy_records_to_table("servers", records=records, columns=columns)
    finally:
        await conn.close()
    return name


def one_run(settings: StackSettings, code: Path, label: str) -> Outcome:
    """One drill with the services imported from `code` (a checkout)."""
    tag = uuid.uuid4().hex[:8]
    agent_id = str(uuid.uuid4())
    database = asyncio.run(_prepare(settings, agent_id))
    specs, topic_env = _topics(tag)
    asyncio.run(create_topics(settings, specs))
    port = free_port()
    env = {
        **topic_env,
        **code_env(code),
        **database_env(settings, code),
        "FLEETPULSE_PG_DATABASE": database,
        "FLEETPULSE_STREAM_GROUP": f"bench-outage-stream-{tag}",
        "FLEETPULSE_SINK_GROUP": f"bench-outage-sink-{tag}",
        "FLEETPULSE_REGISTRY_GROUP": f"bench-outage-registry-{tag}",
        "FLEETPULSE_REGISTRY_PORT": str(port),
        "FLEETPULSE_REGISTRY_KEYS": f"1:{base64.b64encode(secrets.token_bytes(32)).decode()}",
        "FLEETPULSE_METRICS_PORT": "0",
        "FLEETPULSE_BUFFER_SIZE": "1000000",
    }
    paths = DemoPaths(settings.home_dir / "bench")
    args = {
        "registry": ["registry"],
        "sink": ["sink"],
        "stream": ["stream"],
        "agent": ["agent", "--server-id", agent_id],
        "simulate": ["simulate", "--hosts", str(HOSTS), "--seed", str(SEED),
                     "--duration", str(SECONDS)],
    }  # fmt: skip
    children = [
        Child(n, a, paths.logs / f"bench-outage-{label}-{n}-{tag}.log", env=env)
        for n, a in args.items()
    ]
    broker = KafkaCluster(settings)
    start = time.time()
    start_children(children, paths)
    try:
        by_name = {c.name: c for c in children}
        _wait_healthy(port, by_name["registry"], settings.home_dir / "tls" / "ca.crt")
        time.sleep(max(0.0, start + WARMUP - time.time()))
        stopped = time.time()
        broker.stop()
        time.sleep(max(0.0, stopped + OUTAGE - time.time()))
        broker.start()
        back = time.time()
        sim = by_name["simulate"].proc
        assert sim is not None
        sim.wait(timeout=SECONDS + 120)
        until = max(time.time(), back + RECOVERY)
        since_row = (int(start) // WINDOW + 2) * WINDOW
        until_row = int(start + SECONDS) // WINDOW * WINDOW
        expected, rows, dead = landed_rows(settings, database, env, HOSTS, since_row, until_row)
    finally:
        codes = stop_run(settings, children, env, topic_env)
        asyncio.run(drop_database(settings, database))
    lines = {c.name: _noisy_lines(c.log_path, stopped, until) for c in children}
    complete = sum(1 for r in rows if r["sample_count"] == WINDOW)
    return Outcome(lines, complete, expected, dead, codes)


def _say(label: str, o: Outcome) -> None:
    verdict = "FAILED" if o.failed else "complete"
    print(
        f"  {label}: rows {o.rows:,}/{o.expected:,}, {o.dead_letters} dead letters, exits "
        f"{o.exits} ({verdict}); warning/error lines: {o.lines}",
        file=sys.stderr,
        flush=True,
    )


def measure(runs: int, against: str | None) -> str:
    settings = stack_up()
    codes = {f"`{head()}` (this tree)": ROOT}
    if against:
        codes[f"`{against}`"] = checkout(settings, against)
    results: dict[str, list[Outcome]] = {label: [] for label in codes}
    for _ in range(runs):
        for label, code in codes.items():
            o = one_run(settings, code, re.sub(r"\W", "", label))
            _say(label, o)
            results[label].append(o)
    lines = [
        "## Log lines in a broker outage",
        "",
        f"`fleetpulse simulate` ({HOSTS:,} hosts), `agent`, `stream`, `sink` and `registry` as "
        f"separate processes; the broker is stopped {WARMUP} s after the start for {OUTAGE} s. "
        f"Counted: WARNING/ERROR lines each process writes from the stop until {RECOVERY} s "
        "after the broker's return. Each run's output checked first (every 5 s row of the "
        "run complete, no dead letter, every process still up and exiting 0 on SIGTERM at "
        "the end); runs that fail that are failures, not figures.",
        "",
        "| Code | Runs complete | " + " | ".join(args_order()) + " |",
        "| --- | ---: |" + " ---: |" * len(args_order()),
    ]
    for label, outcomes in results.items():
        kept = [o for o in outcomes if not o.failed]
        cells = [
            f"{median([o.lines[n] for o in kept]):,.0f}" if kept else "n/a" for n in args_order()
        ]
        lines.append(f"| {label} | {len(kept)} of {len(outcomes)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Medians over the complete runs.")
    return "\n".join(lines) + "\n"


def args_order() -> tuple[str, ...]:
    return ("simulate", "agent", "stream", "sink", "registry")


def run() -> str:
    """For `benchmarks/run outage`."""
    return measure(RUNS, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs per code (default {RUNS})")
    parser.add_argument("--against", metavar="REV", help="also run this git revision (baseline)")
    options = parser.parse_args()
    print(measure(options.runs, options.against))


if __name__ == "__main__":
    main()
