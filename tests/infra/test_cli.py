"""The `fleetpulse` command line as an operator meets it: help for every command, an invalid
setting named (exit 2), an expected failure as one line (exit 1), no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from infra.cli import build_parser
from infra.stack.process import free_port
from tests.conftest import ROOT


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _commands() -> list[list[str]]:
    """Every command and sub-command of the parser."""
    import argparse

    found: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append([*path, name])
                    walk(sub, [*path, name])

    walk(build_parser(), [])
    return found


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_every_command_has_help(command: list[str]) -> None:
    done = _cli(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: fleetpulse {' '.join(command)}")


def test_an_invalid_setting_is_named_with_exit_2() -> None:
    done = _cli("lag", FLEETPULSE_PG_PORT="70000")
    assert done.returncode == 2
    assert done.stderr.startswith("fleetpulse: error: invalid setting: FLEETPULSE_PG_PORT:")
    assert "Traceback" not in done.stderr


def test_an_unreachable_database_is_one_line_with_exit_1() -> None:
    done = _cli("db", "migrate", FLEETPULSE_PG_PORT=str(free_port()))
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("fleetpulse: error: cannot connect to postgresql://")
    assert "(is the stack up? `fleetpulse stack up`)" in line


def test_a_spool_folder_that_cannot_be_used_is_one_line_with_exit_1() -> None:
    server = "6f1c2a8e-4b7d-4e0a-9c35-0d2f5b8e91a4"
    for command in (["agent", "--server-id", server], ["simulate", "--hosts", "1"]):
        done = _cli(*command, "--spool-dir", "/sys/fleetpulse-spool")
        assert done.returncode == 1, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("fleetpulse: error: cannot create the spool folder /sys/")
    done = _cli("agent", "--server-id", server, FLEETPULSE_SPOOL_MAX_BYTES="10")
    assert done.returncode == 2
    assert done.stderr.startswith("fleetpulse: error: invalid setting: FLEETPULSE_SPOOL_MAX_BYTES")
