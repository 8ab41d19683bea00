"""What TLS and SCRAM cost: the stream worker's catch-up and the whole pipeline, each run
alternately through the broker's TLS/SCRAM listener and through a plaintext listener opened
for the benchmark alone (`FLEETPULSE_KAFKA_PLAINTEXT_PORT`), in the same session.

    python -m benchmarks.tls [--runs N]

The broker is restarted with the plaintext listener for the benchmark and without it after.
Every run's output is checked first (stream: every window whole, DLQ empty; pipeline: every
row landed complete, no dead letter): a run that lost data is a failure, never a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from benchmarks import e2e, stream
from benchmarks.common import drop_database, median, row, stack_up
from infra import stack
from infra.settings import StackSettings
from infra.stack import KafkaCluster

RUNS = 3
PLAINTEXT_PORT = 19095


@contextmanager
def plaintext_listener() -> Iterator[tuple[StackSettings, dict[str, str]]]:
    """The stack with a plaintext listener while in the block (the broker restarted to open
    it, and again to close it); the variables that send a service to it."""
    port = int(os.environ.get("FLEETPULSE_KAFKA_PLAINTEXT_PORT") or PLAINTEXT_PORT)
    os.environ["FLEETPULSE_KAFKA_PLAINTEXT_PORT"] = str(port)
    broker = KafkaCluster(StackSettings())
    if (
        broker.process() is not None
        and "PLAINTEXT://" not in broker.nodes[0].properties.read_text()
    ):
        broker.stop()
    settings = stack_up()
    plain = {
        "FLEETPULSE_KAFKA_BOOTSTRAP": f"{settings.kafka_host}:{port}",
        "FLEETPULSE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
    }
    try:
        yield settings, plain
    finally:
        del os.environ["FLEETPULSE_KAFKA_PLAINTEXT_PORT"]
        closed = StackSettings()
        KafkaCluster(closed).stop()
        stack.up(closed)


def _ratio(tls: list[float], plain: list[float]) -> str:
    return f"{100 * (median(tls) / median(plain) - 1):+.1f} %"


def measure(runs: int) -> str:
    with plaintext_listener() as (settings, plain):
        modes = {"TLS + SCRAM": {}, "plaintext": plain}
        worker: dict[str, list[stream.Run]] = {m: [] for m in modes}
        failures: list[str] = []
        for i in range(runs):
            for mode, connect in modes.items():
                print(f"stream catch-up {i + 1}/{runs}, {mode} …", file=sys.stderr, flush=True)
                result = stream.throughput_run(settings.kafka_bootstrap, connect or None)
                if isinstance(result, stream.Shortfall):
                    failures.append(f"stream {mode}: {result}")
                else:
                    worker[mode].append(result)
        database = asyncio.run(e2e._prepare(settings, e2e.TARGET_HOSTS))
        pipeline: dict[str, list[e2e.Result]] = {m: [] for m in modes}
        try:
            for i in range(runs):
                for mode, connect in modes.items():
                    print(f"pipeline {i + 1}/{runs}, {mode} …", file=sys.stderr, flush=True)
                    r = e2e.one_run(
                        settings, database, e2e.TARGET_HOSTS, e2e.GRACE, connect=connect or None
                    )
                    if r.lost_data or r.rows != r.expected:
                        failures.append(f"pipeline {mode}: {r.verdict}, {r.rows}/{r.expected} rows")
                    else:
                        pipeline[mode].append(r)
        finally:
            asyncio.run(drop_database(settings, database))
    if not all(worker.values()) or not all(pipeline.values()):
        raise RuntimeError(f"not enough complete runs: {'; '.join(failures)}")
    return _report(worker, pipeline, runs, failures)


def _report(
    worker: dict[str, list[stream.Run]],
    pipeline: dict[str, list[e2e.Result]],
    runs: int,
    failures: list[str],
) -> str:
    tls, plain = "TLS + SCRAM", "plaintext"
    w = {m: [r.sustained for r in rs] for m, rs in worker.items()}
    wcpu = {m: [r.cpu for r in rs] for m, rs in worker.items()}
    lines = [
        "## TLS and SCRAM: what they cost",
        "",
        f"The same runs alternately through the broker's TLS + SCRAM-SHA-512 listener and a "
        f"plaintext listener opened for this benchmark only; {runs} of each, in one session. "
        f"Every run's output checked first; failed runs: {'; '.join(failures) or 'none'}.",
        "",
        f"Stream worker catch-up ({stream.EVENTS:,} raw events, as in *Stream worker*):",
        "",
        "| Measure | Median | Range | TLS against plaintext |",
        "| --- | ---: | ---: | ---: |",
        row(f"Events/s sustained, {tls}", w[tls], "{:,.0f}", _ratio(w[tls], w[plain])),
        row(f"Events/s sustained, {plain}", w[plain], "{:,.0f}", ""),
        row(
            f"Worker CPU % of one core, {tls}", wcpu[tls], "{:.0f}", _ratio(wcpu[tls], wcpu[plain])
        ),
        row(f"Worker CPU % of one core, {plain}", wcpu[plain], "{:.0f}", ""),
        "",
        f"Pipeline ({e2e.TARGET_HOSTS:,} simulated hosts at 1 Hz for {e2e.SECONDS} s through "
        "simulator, stream, sink and registry, as in *End to end*):",
        "",
        "| Measure | Median | Range | TLS against plaintext |",
        "| --- | ---: | ---: | ---: |",
    ]
    measures: dict[str, Callable[[e2e.Result], float]] = {
        "Events/s landed": lambda r: r.events_per_s,
        "p99 window end to row, s": lambda r: r.p99,
        "Whole machine busy, % of all cores": lambda r: r.busy,
        "Stream CPU, % of one core": lambda r: r.cpu.get("stream", 0.0),
        "Sink CPU, % of one core": lambda r: r.cpu.get("sink", 0.0),
        "Simulator CPU, % of one core": lambda r: r.cpu.get("simulate", 0.0),
        "Kafka broker CPU, % of one core": lambda r: r.cpu.get("kafka", 0.0),
    }
    for label, get in measures.items():
        t = [get(r) for r in pipeline[tls]]
        p = [get(r) for r in pipeline[plain]]
        lines.append(row(f"{label}, {tls}", t, "{:,.2f}", _ratio(t, p)))
        lines.append(row(f"{label}, {plain}", p, "{:,.2f}", ""))
    lines.append("")
    return "\n".join(lines)


def run() -> str:
    return measure(RUNS)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="What TLS and SCRAM cost: the stream worker's catch-up and the pipeline, "
        "through the TLS + SCRAM listener against a plaintext one, alternating."
    )
    parser.add_argument("--runs", type=int, default=RUNS, help="runs of each mode")
    print(measure(parser.parse_args().runs))


if __name__ == "__main__":
    main()
