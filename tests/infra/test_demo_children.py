"""Unit: the demo's own bookkeeping (ids, stopping and restarting children, the live table);
nothing running."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from rich.console import Console

from infra.demo import (
    RESTART_STABLE,
    Child,
    DemoPaths,
    Sample,
    Supervisor,
    describe_exit,
    render,
    sigterm_as_interrupt,
    stop_children,
    stop_leftovers,
    this_server_id,
)
from runtime.backoff import Backoff
from schemas import AGG_1D, AGG_1H, AGG_5S, DLQ, RAW


def test_this_machine_gets_one_id_kept_under_the_home_folder(tmp_path: Path) -> None:
    paths = DemoPaths(tmp_path)
    first = this_server_id(paths)
    assert uuid.UUID(first).version == 4
    assert this_server_id(paths) == first
    assert paths.server_id.read_text().strip() == first


def _child(tmp_path: Path, name: str, code: str) -> Child:
    child = Child(name, [], tmp_path / f"{name}.log")
    child.proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    assert child.proc.stdout is not None
    assert child.proc.stdout.readline() == b"ready\n"  # its signal handler is in place
    return child


def test_children_get_sigterm_then_sigkill_after_the_timeout(tmp_path: Path) -> None:
    polite = _child(tmp_path, "polite", "import time; print('ready', flush=True); time.sleep(60)")
    stubborn = _child(
        tmp_path,
        "stubborn",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)",
    )
    codes = stop_children([polite, stubborn], timeout=1.0)
    assert codes == {"polite": -15, "stubborn": -9}
    assert polite.state == "exited (-15)" and stubborn.state == "exited (-9)"


def test_the_live_table_shows_rates_lag_and_servers(tmp_path: Path) -> None:
    def sample(at: float, raw: int, rows: int, online: int) -> Sample:
        ends = {RAW.name: raw, AGG_5S.name: raw // 5, AGG_1H.name: 0, AGG_1D.name: 0, DLQ.name: 1}
        tables = {"metrics_snapshots": rows, "metrics_hourly": 0, "metrics_daily": 0}
        return Sample(at, ends, 12, None, tables, online, 201)

    first, since, now = (
        sample(0, 1000, 100, 0),
        sample(10, 2000, 200, 150),
        sample(20, 4010, 600, 201),
    )
    console = Console(width=120, record=True, file=io.StringIO())
    restarted = Child("sink", [], tmp_path / "sink.log", restarts=2)
    children = [Child("agent", [], tmp_path / "agent.log"), restarted]
    console.print(render(first, since, now, children))
    text = console.export_text()
    assert "3,010" in text and "201.0" in text  # raw events since start, and per second
    assert "40.0" in text  # rows per second over the last 10 s
    assert "stream 12" in text and "sink -" in text
    assert "201 of 201" in text
    assert "agent" in text and "not started" in text
    assert "restarts 0" in text and "restarts 2" in text  # per child


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _exits(code: int) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.exit({code})"]


class Spawner:
    """Starts `argv` as the child's new process, as `start_child` would start the service."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.notes: list[str] = []

    def __call__(self, child: Child, note: str) -> None:
        self.notes.append(note)
        child.proc = subprocess.Popen(self.argv)


def _supervised(tmp_path: Path, argv: list[str], **backoff: float) -> tuple[Child, list[str]]:
    child = Child("sink", [], tmp_path / "logs" / "sink.log", started_at=1000.0)
    child.backoff = Backoff(backoff.get("first", 1.0), backoff.get("cap", 8.0), jitter=0)
    child.proc = subprocess.Popen(argv)
    child.proc.wait()
    return child, []


def test_a_child_that_keeps_crashing_waits_longer_each_time_up_to_the_cap(
    tmp_path: Path,
) -> None:
    paths, clock, spawn = DemoPaths(tmp_path), Clock(), Spawner(_exits(3))
    child, lines = _supervised(tmp_path, _exits(3))
    supervisor = Supervisor([child], paths, lines.append, clock=clock, spawn=spawn)
    delays = []
    for restart in range(1, 7):
        supervisor.check()  # sees the exit, schedules the restart
        assert child.restart_at is not None and child.last_exit == 3
        delays.append(child.restart_at - clock.now)
        clock.now += delays[-1] - 0.1
        supervisor.check()  # not yet
        assert child.restarts == restart - 1
        clock.now += 0.1
        supervisor.check()
        assert child.restarts == restart and child.restart_at is None
        assert child.proc is not None
        child.proc.wait()
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]  # doubled, then capped: never a tight loop
    assert "sink (pid" in lines[0] and "exit status 3 after 0 s; restart 1 in 1.0 s" in lines[0]
    assert lines[1].startswith("sink restarted: pid ") and lines[1].endswith("restart 1")
    assert spawn.notes[0] == "restarts it (restart 1)"
    record = json.loads(paths.children.read_text())
    assert child.proc is not None
    assert record == {"sink": {"pid": child.proc.pid, "restarts": 6, "last_exit": 3}}
    log = child.log_path.read_text()
    assert "fleetpulse demo saw it exit: sink (pid" in log


def test_a_child_that_ran_long_before_it_died_is_restarted_soon_again(tmp_path: Path) -> None:
    paths, clock, spawn = DemoPaths(tmp_path), Clock(), Spawner(_exits(1))
    child, lines = _supervised(tmp_path, _exits(1))
    supervisor = Supervisor([child], paths, lines.append, clock=clock, spawn=spawn)
    for _ in range(3):  # three quick crashes: the next wait would be 8 s
        supervisor.check()
        assert child.restart_at is not None
        clock.now = child.restart_at
        supervisor.check()
        assert child.proc is not None
        child.proc.wait()
    clock.now += RESTART_STABLE  # this one ran a minute: healthy, until it died
    supervisor.check()
    assert child.restart_at == clock.now + 1.0


def test_kill_9_is_reported_with_the_signal(tmp_path: Path) -> None:
    paths, clock = DemoPaths(tmp_path), Clock()
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    spawn = Spawner(sleeper)
    child = Child("stream", [], tmp_path / "stream.log", started_at=clock.now)
    child.backoff = Backoff(1.0, 8.0, jitter=0)
    child.proc = subprocess.Popen(sleeper)
    lines: list[str] = []
    supervisor = Supervisor([child], paths, lines.append, clock=clock, spawn=spawn)
    try:
        supervisor.check()
        assert not lines  # running: nothing to do
        old = child.proc.pid
        child.proc.kill()
        child.proc.wait()
        clock.now += 12
        supervisor.check()
        assert lines[-1] == (f"stream (pid {old}) killed by SIGKILL after 12 s; restart 1 in 1.0 s")
        assert child.state.startswith("killed by SIGKILL, restart in ")
        clock.now += 1
        supervisor.check()
        assert child.state == "running" and child.proc.pid != old
        assert json.loads(paths.children.read_text())["stream"] == {
            "pid": child.proc.pid,
            "restarts": 1,
            "last_exit": -9,
        }
    finally:
        stop_children([child], timeout=5)


def test_the_demo_stopping_its_children_restarts_none(tmp_path: Path) -> None:
    paths, clock = DemoPaths(tmp_path), Clock()
    spawn = Spawner(_exits(0))
    children = [
        _child(tmp_path, name, "import time; print('ready', flush=True); time.sleep(60)")
        for name in ("agent", "sink")
    ]
    lines: list[str] = []
    supervisor = Supervisor(children, paths, lines.append, clock=clock, spawn=spawn)
    supervisor.shutdown()
    assert stop_children(children, timeout=5) == {"agent": -15, "sink": -15}
    for _ in range(3):
        supervisor.check()
        clock.now += 60
    assert not spawn.notes and not lines
    assert all(c.restarts == 0 and c.restart_at is None for c in children)
    assert asyncio.run(asyncio.wait_for(supervisor.run(every=0.01), 1)) is None  # returns


def test_sigterm_stops_the_demo_loop_like_ctrl_c() -> None:
    async def loop() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(30)

    before = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
        asyncio.run(loop())  # the main task cancelled at its await, then KeyboardInterrupt
    assert time.monotonic() - started < 5
    assert signal.getsignal(signal.SIGTERM) is before


def test_exit_statuses_read_as_an_operator_reads_them() -> None:
    assert describe_exit(0) == "exit status 0"
    assert describe_exit(2) == "exit status 2"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-15) == "killed by SIGTERM"


def test_leftovers_of_an_earlier_demo_are_found_in_either_record(tmp_path: Path) -> None:
    paths = DemoPaths(tmp_path)
    gone = subprocess.Popen(_exits(0))
    gone.wait()
    for record in ({"sink": gone.pid}, {"sink": {"pid": gone.pid, "restarts": 1}}):
        paths.children.parent.mkdir(parents=True, exist_ok=True)
        paths.children.write_text(json.dumps(record))
        assert stop_leftovers(paths) == []  # not running any more
        assert not paths.children.exists()
