"""Starting, finding and stopping the stack's background processes by PID."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from runtime.errors import FleetPulseError


@dataclass(frozen=True)
class ComponentStatus:
    """What `fleetpulse stack status` reports for one component."""

    name: str
    running: bool
    pid: int | None
    address: str
    detail: str


class StackError(FleetPulseError):
    """The local stack could not do what was asked; the message says why and what to do."""


def secret_file(path: Path, nbytes: int = 24) -> str:
    """The secret in `path`, generated once (URL-safe, from `nbytes` random bytes) into a
    file of mode 0600 (in a folder made mode 0700 if it did not exist)."""
    if not path.exists():
        fresh = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:  # an existing folder keeps its mode
            path.parent.chmod(0o700)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(nbytes))
    return path.read_text().strip()


def read_pid(path: Path) -> int | None:
    """The PID in a pid file's first line, or None."""
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def find_process(pid: int | None, marker: str) -> psutil.Process | None:
    """The live process with this PID whose command line contains `marker`.

    The marker guards against a stale pid file whose number now belongs to another program.
    """
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if marker in " ".join(proc.cmdline()):
            return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return None


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def spawn(argv: Sequence[str], *, log: Path, cwd: Path, env: dict[str, str] | None = None) -> int:
    """Start a long-running process in its own session, output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc.pid


def stop_process(proc: psutil.Process, *, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Signal a process and wait for it to exit; SIGKILL it (and its children) after `timeout`."""
    try:
        children = proc.children(recursive=True)
        proc.send_signal(sig)
        _, alive = psutil.wait_procs([proc], timeout=timeout)
        if alive:
            for p in [proc, *children]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            psutil.wait_procs([proc, *children], timeout=10)
    except psutil.NoSuchProcess:
        return


def wait_until(
    check: Callable[[], bool], *, timeout: float, what: str, log: Path | None = None
) -> None:
    """Poll `check()` until it is true; raise `StackError` naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    hint = f"; see {log}" if log else ""
    raise StackError(f"{what} did not become ready within {timeout:.0f} s{hint}")


def run_checked(argv: Sequence[str], *, what: str, env: dict[str, str] | None = None) -> str:
    """Run a short command; on failure raise `StackError` with its output."""
    result = subprocess.run(
        list(argv), capture_output=True, text=True, env=env or os.environ.copy(), check=False
    )
    if result.returncode != 0:
        raise StackError(
            f"{what} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result.stdout
