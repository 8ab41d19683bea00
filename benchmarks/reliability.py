"""Reliability: every fault drill on its own on a 3-broker stack, at a larger fleet than the
tests', and the broker and stream faults at the largest fleet the end-to-end benchmark holds.

A drill whose rows differ from its reference run is reported as failed, with its figures
(lost, duplicated, wrong), never as a recovery time. The stack is its own (three brokers and a
PostgreSQL cluster under `.fleetpulse/reliability/`, ports 39392.. and 56532), so the dev
stack keeps its single broker.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import time
from pathlib import Path

from infra import stack
from infra.drill import RECOVERY_TIMEOUT, Drill, DrillError, DrillOptions, Report
from infra.faults import FAULTS
from infra.settings import StackSettings

ROOT = Path(__file__).resolve().parents[1]
#: The drills at this fleet, each on its own.
HOSTS, SPEED = 2_000, 2.0
#: The largest fleet the end-to-end benchmark holds (BENCHMARKS.md, *End to end*), at 1 Hz.
LARGE_HOSTS, LARGE_SPEED = 10_000, 1.0
LARGE_FAULTS = ("broker-leader",)


def settings() -> StackSettings:
    return StackSettings(
        home=ROOT / ".fleetpulse" / "reliability",
        kafka_brokers=3,
        kafka_bootstrap="127.0.0.1:39392",
        kafka_controller_port=39393,
        kafka_internal_port=39394,
        kafka_plaintext_port=0,
        kafka_proxied_port=0,
        kafka_proxy_port=0,
        pg_port=56532,
    )


def command(s: StackSettings, fault: str, hosts: int, speed: float) -> str:
    env = (
        f"FLEETPULSE_HOME={s.home.relative_to(ROOT)} "
        f"FLEETPULSE_KAFKA_BOOTSTRAP={s.kafka_bootstrap.split(',')[0]} "
        f"FLEETPULSE_KAFKA_CONTROLLER_PORT={s.kafka_controller_port} "
        f"FLEETPULSE_KAFKA_INTERNAL_PORT={s.kafka_internal_port} FLEETPULSE_PG_PORT={s.pg_port}"
    )
    return f"{env} fleetpulse drill {shlex.quote(fault)} --hosts {hosts} --speed {speed:g}"


def one(s: StackSettings, fault: str, hosts: int, speed: float) -> Report:
    logs = s.home_dir / "drills" / f"{time.strftime('%Y%m%dT%H%M%S')}-{fault}-{hosts}"
    options = DrillOptions(hosts=hosts, speed=speed, logs=logs)
    return asyncio.run(Drill(s, options).run([fault], say=lambda line: print(f"  {line}")))


def row(fault: str, hosts: int, speed: float, r: Report | DrillError, cmd: str) -> str:
    load = f"{hosts:,} hosts, {hosts * speed:,.0f} events/s"
    if isinstance(r, DrillError):  # no verdict at all: say why
        return f"| {fault} | {load} | drill failed: {r} | | | | | | `{cmd}` |"
    expected = sum(r.expected.values())
    lost, dup, wrong = (sum(d.values()) for d in (r.lost, r.duplicated, r.mismatched))
    if not r.passed:
        recovery = "data differs"
    elif not r.recovered:
        recovery = f"not within {RECOVERY_TIMEOUT:.0f}"
    else:
        recovery = f"{r.faults[0].recovery:.1f}"
    return (
        f"| {fault} | {load} | {expected:,} | {lost} | {dup} | {wrong} | {r.dead_letters} | "
        f"{recovery} | `{cmd}` |"
    )


INTRO = (
    "Each fault drill (`fleetpulse drill`, README *Fault drills*) on its own: the stream "
    "worker, the sink and the registry on a 3-broker cluster (RF 3, min.insync.replicas 2) "
    "under a time-lapse of simulated hosts across midnight; the part killed with -9 "
    "mid-window and started again after 5 s; then the same load through an uninterrupted "
    "reference run. Rows: the 5 s rows and the hourly and daily rows the load closed, "
    "compared column for column. Recovery: seconds from the kill until the newest row is "
    "back within one second of the undisturbed pipeline's delay. The `agent` drill kills "
    "every broker, and the agent during that outage."
)


def measure(faults: tuple[str, ...], large: tuple[str, ...], title: str = "Reliability") -> str:
    s = settings()
    stack.up(s)
    lines = [
        f"## {title}",
        "",
        INTRO,
        "",
        "| Fault | Load | Rows expected | Lost | Duplicated | Wrong | Dead letters | "
        "Recovery, s | Reproduce |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    runs = [(f, HOSTS, SPEED) for f in faults] + [(f, LARGE_HOSTS, LARGE_SPEED) for f in large]
    try:
        for fault, hosts, speed in runs:
            print(f"drill {fault} at {hosts} hosts", flush=True)
            report: Report | DrillError
            try:
                report = one(s, fault, hosts, speed)
            except DrillError as exc:  # the next drills still run
                print(f"  drill failed: {exc}", flush=True)
                report = exc
            lines.append(row(fault, hosts, speed, report, command(s, fault, hosts, speed)))
    finally:
        stack.down(s)  # three brokers would weigh on the benchmarks that follow
    lines.append("")
    return "\n".join(lines)


def run() -> str:
    """The drills at `HOSTS` (`benchmarks/run reliability`; `reliability_large` runs the
    largest fleet)."""
    return measure(FAULTS, ())


def run_large() -> str:
    return measure((), LARGE_FAULTS, "Reliability at the largest fleet")


def main() -> None:
    parser = argparse.ArgumentParser(description="Every fault drill on a 3-broker stack.")
    parser.add_argument("faults", nargs="*", metavar="FAULT", help=f"some of {', '.join(FAULTS)}")
    parser.add_argument("--large", action="store_true", help=f"also at {LARGE_HOSTS:,} hosts")
    args = parser.parse_args()
    unknown = set(args.faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(sorted(unknown))}")
    faults = tuple(args.faults) or FAULTS
    print(measure(faults, LARGE_FAULTS if args.large else ()))


if __name__ == "__main__":
    main()
