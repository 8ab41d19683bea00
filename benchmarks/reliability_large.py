"""Reliability at the largest fleet the end-to-end benchmark holds (BENCHMARKS.md, *End to
end*): the broker-leader drill at `LARGE_HOSTS` hosts, 1 Hz, on the 3-broker stack of
`benchmarks/reliability.py` (its own section, so each can be run again alone)."""

from __future__ import annotations

from benchmarks.reliability import run_large


def run() -> str:
    return run_large()


if __name__ == "__main__":
    print(run())
