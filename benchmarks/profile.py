"""Profiles: where a service's time goes, sampled by py-spy while it works through a backlog:
the stream worker through the stream benchmark's (`benchmarks/stream.py`), the sink through
the sink benchmark's (`benchmarks/sink.py`).

    python -m benchmarks.profile [--rate HZ] [--keep DIR]

py-spy attaches to the running worker (`--nonblocking`: the worker is never paused, so the
run's figures stay comparable) and writes collapsed stacks; they are summed here per function
into the share of samples it was on the stack at all (inclusive) and at the top (self). The
run's output is checked as the benchmark's is: a run that lost data gives no profile.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from benchmarks.common import ROOT, stack_up
from benchmarks.sink import Run as SinkRun
from benchmarks.sink import Shortfall as SinkShortfall
from benchmarks.sink import backlog as sink_values
from benchmarks.sink import sink_run
from benchmarks.stream import Run, Shortfall, throughput_run

#: Samples per second (py-spy's default is 100).
RATE = 250
#: Functions listed per profile.
TOP = 18
#: A function on at least this share of the stacks, doing nothing itself, is the trunk.
TRUNK = 0.7
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


@dataclass(frozen=True)
class Entry:
    function: str
    inclusive: float  # share of samples with it on the stack
    own: float  # share of samples with it at the top


def frame_name(frame: str) -> str:
    """`function (path/to/file.py:12)` → `function (file.py)`; site-packages and the
    standard library are shortened to their module path."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "lib/python3", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("lib/python3"):
                path = path.split("/", 1)[1] if "/" in path else path
            break
    return f"{m['func']} ({path})"


def summarise(lines: Iterable[str], top: int = TOP) -> tuple[int, list[Entry]]:
    """From py-spy's collapsed stacks (`frame;frame;... count`): the number of samples and
    the `top` functions by inclusive share, without the trunk (the frames most stacks pass
    through and that do nothing themselves: the event loop, the process's entry)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        names = [frame_name(f) for f in stack.split(";")]
        total += n
        for name in set(names):
            inclusive[name] += n
        own[names[-1]] += n
    if not total:
        return 0, []
    entries = [Entry(f, n / total, own[f] / total) for f, n in inclusive.most_common()]
    entries = [e for e in entries if e.inclusive < TRUNK or e.own > 0.005]
    return total, entries[:top]


def by_own(lines: Iterable[str], top: int = TOP) -> list[Entry]:
    """The `top` functions by the share of samples at the top of the stack (their own time)."""
    _, entries = summarise(lines, top=10**6)
    return sorted(entries, key=lambda e: e.own, reverse=True)[:top]


def py_spy() -> str:
    found = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: run `benchmarks/run` (it installs it)")
    return found


def attach_py_spy(out: Path, rate: int) -> Callable[[int], Callable[[], None]]:
    """An `attach` for `throughput_run`: py-spy records the worker until the timed part ends."""

    def attach(pid: int) -> Callable[[], None]:
        proc = subprocess.Popen(
            [py_spy(), "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking",
             "--nolineno", "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def detach() -> None:
            proc.send_signal(signal.SIGINT)  # py-spy writes what it has, then exits
            proc.wait(timeout=60)

        return detach

    return attach


def table(title: str, entries: list[Entry]) -> list[str]:
    lines = [title, "", "| Function | On the stack, % | At the top, % |", "| --- | ---: | ---: |"]
    lines += [f"| `{e.function}` | {100 * e.inclusive:.1f} | {100 * e.own:.1f} |" for e in entries]
    return [*lines, ""]


def tables(name: str, text: str) -> list[str]:
    lines = text.splitlines()
    total, entries = summarise(lines)
    return [
        *table(f"{name}, by time on the stack ({total:,} samples; the trunk left out):", entries),
        *table(f"{name}, by its own time:", by_own(lines)),
    ]


R = TypeVar("R")


def profiled(
    name: str, rate: int, keep: Path | None, run: Callable[[Callable[[int], Callable[[], None]]], R]
) -> tuple[R, str]:
    """`run(attach)` with py-spy attached through `attach`: its result and the collapsed
    stacks (kept in `keep`/`name`.txt if given). A run that lost data gives no profile."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.txt"
        result = run(attach_py_spy(out, rate))
        if isinstance(result, (Shortfall, SinkShortfall)):
            raise RuntimeError(f"the profiled {name} run lost data: {result}")
        if not out.exists():
            raise RuntimeError("py-spy wrote no profile (is ptrace allowed here?)")
        if keep:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(out, keep / out.name)
        return result, out.read_text()


def run(rate: int = RATE, keep: Path | None = None) -> str:
    settings = stack_up()
    bootstrap, values = settings.kafka_bootstrap, sink_values()
    figures, stream_text = profiled(
        "stream", rate, keep, lambda attach: throughput_run(bootstrap, attach=attach)
    )
    sink_figures, sink_text = profiled(
        "sink", rate, keep, lambda attach: sink_run(settings, values, attach=attach)
    )
    assert isinstance(figures, Run) and isinstance(sink_figures, SinkRun)
    stream = tables("Stream worker, through the backlog", stream_text)
    sink = tables("Sink, through the backlog", sink_text)
    return "\n".join(
        [
            "## Profiles",
            "",
            f"py-spy {rate} Hz, `--nonblocking`, attached to the worker of one stream "
            f"benchmark run (its output checked: every window whole, DLQ empty); it ran at "
            f"{figures.sustained:,.0f} events/s sustained, {figures.cpu:.0f} % of a core. "
            "A function's share counts the samples with it anywhere on the stack; idle "
            "samples (the worker waiting) are not counted. Reproduce: "
            "`python -m benchmarks.profile --keep DIR` (DIR gets the collapsed stacks, "
            "for a flame graph).",
            "",
            *stream,
            f"The sink, the same way, through the sink benchmark's backlog (`benchmarks/sink.py`, "
            f"checked: every row landed, DLQ empty); it ran at {sink_figures.sustained:,.0f} "
            f"rows/s sustained, {sink_figures.cpu:.0f} % of a core.",
            "",
            *sink,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Profile the stream worker with py-spy.")
    parser.add_argument("--rate", type=int, default=RATE, help=f"samples/s (default {RATE})")
    parser.add_argument("--keep", type=Path, help="a folder to keep the collapsed stacks in")
    args = parser.parse_args()
    print(run(args.rate, args.keep))


if __name__ == "__main__":
    main()
