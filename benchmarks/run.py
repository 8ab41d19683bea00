"""Runs the benchmarks and writes BENCHMARKS.md (not part of `make test`).

    benchmarks/run                 # every benchmark
    benchmarks/run agent e2e       # only some: agent, simulator, sink_write, sink, stream,
                                   # fleet_query, alerts, scaling, profile, stream_delay, e2e,
                                   # outage, backup, tls, reliability, reliability_large

Each benchmark's section is kept in benchmarks/results/<name>.md with the machine and date it
ran on; BENCHMARKS.md is assembled from all of them, so running one refreshes only its own.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from benchmarks.common import machine

ALL = (
    "agent",
    "simulator",
    "sink_write",
    "sink",
    "stream",
    "fleet_query",
    "alerts",
    "scaling",
    "profile",
    "stream_delay",
    "e2e",
    "outage",
    "backup",
    "tls",
    "reliability",
    "reliability_large",
)
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "BENCHMARKS.md"


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the benchmarks; write BENCHMARKS.md.")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"some of: {', '.join(ALL)}")
    names = parser.parse_args().names or list(ALL)
    unknown = set(names) - set(ALL)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        print(f"running {name} …", flush=True)
        section = importlib.import_module(f"benchmarks.{name}").run()
        title, _, body = section.partition("\n")
        (RESULTS / f"{name}.md").write_text(f"{title}\n\nMachine: {machine()}.\n{body}")
    sections = [(RESULTS / f"{n}.md").read_text() for n in ALL if (RESULTS / f"{n}.md").exists()]
    OUT.write_text(
        "# FleetPulse benchmarks\n\n"
        "Reproduce with `benchmarks/run [NAME …]` (it starts the local stack). Figures are medians "
        "over several runs on one noisy machine; ratios compare alternatives measured in the same "
        "run.\n\n" + "\n".join(sections)
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
