"""The stream worker's live delay against a baseline revision, measured in the same session.

The live runs of `benchmarks/stream.py` alternate between this tree's worker and the
worker of `BASELINE` (a git revision, checked out with `git worktree` under the stack's home),
so both meet the same machine noise. `python -m benchmarks.stream delay --runs N --against
REV` does the same against any revision.
"""

from __future__ import annotations

from benchmarks.stream import delay_compare

#: The last revision before the runtime layer (`runtime/`): the baseline of its figures.
BASELINE = "cbe5ee2"
RUNS = 3


def run() -> str:
    return "## Stream worker, live delay against the previous release\n\n" + delay_compare(
        RUNS, BASELINE
    )
