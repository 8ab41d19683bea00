"""Runs the benchmarks and writes BENCHMARKS.md (not part of `make test`).

benchmarks/run                 # every benchmark
benchmarks/run agent           # only some: agent, simulator
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from benchmarks.common import machine

ALL = ("agent", "simulator")
OUT = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"some of: {', '.join(ALL)}")
    names = parser.parse_args().names or list(ALL)
    unknown = set(names) - set(ALL)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    sections = []
    for name in names:
        print(f"running {name} …", flush=True)
        sections.append(importlib.import_module(f"benchmarks.{name}").run())
    text = (
        "# FleetPulse benchmarks\n\n"
        "Reproduce with `benchmarks/run` (it starts the local stack). Figures are medians over "
        "several runs on one noisy machine; ratios compare alternatives measured in the same "
        "run.\n\n"
        f"Machine: {machine()}.\n\n" + "\n".join(sections)
    )
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
