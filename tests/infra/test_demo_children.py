"""Unit: the demo's own bookkeeping (ids, stopping children, the live table); nothing running."""

from __future__ import annotations

import io
import subprocess
import sys
import uuid
from pathlib import Path

from rich.console import Console

from infra.demo import Child, DemoPaths, Sample, render, stop_children, this_server_id
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
    console.print(render(first, since, now, [Child("agent", [], tmp_path / "agent.log")]))
    text = console.export_text()
    assert "3,010" in text and "201.0" in text  # raw events since start, and per second
    assert "40.0" in text  # rows per second over the last 10 s
    assert "stream 12" in text and "sink -" in text
    assert "201 of 201" in text
    assert "agent" in text and "not started" in text
