"""Unit tests of the local stack's process helpers: pid files, the marker guard, readiness."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import psutil
import pytest

from infra.stack.process import (
    StackError,
    find_process,
    free_port,
    port_open,
    read_pid,
    run_checked,
    spawn,
    stop_process,
    wait_until,
)


def test_read_pid(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    assert read_pid(path) is None
    path.write_text("")
    assert read_pid(path) is None
    path.write_text("nonsense\n")
    assert read_pid(path) is None
    path.write_text("4242\n")
    assert read_pid(path) == 4242


def test_a_stale_pid_of_another_program_is_not_ours() -> None:
    me = os.getpid()
    assert find_process(me, "pytest") is not None
    assert find_process(me, "kafka.Kafka") is None  # the pid file's number, someone else's
    assert find_process(None, "pytest") is None


def test_free_port_and_port_open() -> None:
    port = free_port()
    assert not port_open("127.0.0.1", port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert port_open("127.0.0.1", port)


def test_spawn_logs_and_stop_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "child.log"
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    pid = spawn([sys.executable, "-c", code], log=log, cwd=tmp_path)
    proc = psutil.Process(pid)
    wait_until(lambda: "up" in log.read_text(), timeout=10, what="the child")
    stop_process(proc, timeout=0.5)
    assert not psutil.pid_exists(pid) or proc.status() == psutil.STATUS_ZOMBIE


def test_wait_until_names_what_did_not_become_ready(tmp_path: Path) -> None:
    with pytest.raises(
        StackError, match=r"the broker did not become ready within 0 s; see .*x\.log"
    ):
        wait_until(lambda: False, timeout=0.3, what="the broker", log=tmp_path / "x.log")


def test_run_checked_returns_output_or_raises_with_it() -> None:
    assert run_checked(["echo", "hi"], what="echo") == "hi\n"
    with pytest.raises(StackError, match=r"ls failed \(exit 2\):\n.*no-such-file"):
        run_checked(["ls", "/no-such-file"], what="ls")
