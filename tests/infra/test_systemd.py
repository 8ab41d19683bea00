"""Unit: the systemd units `fleetpulse systemd` writes, read back as systemd reads them, and
checked by `systemd-analyze verify`."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.systemd import (
    SERVICES,
    UnitError,
    UnitOptions,
    find_executable,
    render,
    select,
    write_units,
)
from tests.conftest import ROOT

Unit = dict[str, dict[str, list[str]]]


def _parse(text: str) -> Unit:
    """Sections → key → values, in order (a key may repeat, as EnvironmentFile= does)."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        section.setdefault(key, []).append(value)
    return unit


def _one(unit: Unit, section: str, key: str) -> str:
    (value,) = unit[section][key]
    return value


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def units(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Unit]:
    """Every service's unit with the default options, parsed."""
    out = tmp_path_factory.mktemp("units")
    written = write_units(list(SERVICES), UnitOptions(find_executable()), out)
    return {p.name: _parse(p.read_text()) for p in written}


def test_every_service_restarts_on_failure_within_a_rate_limit(units: dict[str, Unit]) -> None:
    assert sorted(units) == sorted(f"fleetpulse-{s.name}.service" for s in SERVICES)
    for name, unit in units.items():
        assert _one(unit, "Service", "Restart") == "on-failure", name
        assert _one(unit, "Service", "RestartSec") == "5s"
        assert _one(unit, "Service", "RestartPreventExitStatus") == "2"  # an invalid setting
        assert _one(unit, "Unit", "StartLimitIntervalSec") == "10min"
        assert _one(unit, "Unit", "StartLimitBurst") == "5"
        assert _one(unit, "Install", "WantedBy") == "multi-user.target"


def test_every_service_has_limits_a_user_and_its_settings(units: dict[str, Unit]) -> None:
    def size(value: str) -> int:
        return int(value[:-1]) << {"K": 10, "M": 20, "G": 30}[value[-1]]

    for name, unit in units.items():
        service = unit["Service"]
        high, top = size(_one(unit, "Service", "MemoryHigh")), size(service["MemoryMax"][0])
        assert 64 << 20 <= high < top <= 1 << 30, name
        assert 32 <= int(_one(unit, "Service", "TasksMax")) <= 256
        assert int(_one(unit, "Service", "LimitNOFILE")) >= 1024
        assert _one(unit, "Service", "User") == "fleetpulse"
        assert service["EnvironmentFile"] == [
            "/etc/fleetpulse/fleetpulse.env",
            f"-/etc/fleetpulse/{name.removeprefix('fleetpulse-').removesuffix('.service')}.env",
        ]
        assert "FLEETPULSE_HOME=/var/lib/fleetpulse" in service["Environment"]
        for key, value in {
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "PrivateTmp": "yes",
            "StateDirectory": "fleetpulse",
            "ReadWritePaths": "/var/lib/fleetpulse",
            "WorkingDirectory": "/var/lib/fleetpulse",
        }.items():
            assert _one(unit, "Service", key) == value, (name, key)
    assert _one(units["fleetpulse-registry.service"], "Service", "LimitNOFILE") == "65536"


def test_exec_start_runs_the_installed_command_with_a_real_subcommand(
    units: dict[str, Unit],
) -> None:
    for name, unit in units.items():
        argv = shlex.split(_one(unit, "Service", "ExecStart"))
        executable = Path(argv[0])
        assert executable.is_absolute() and executable.is_file(), name
        assert os.access(executable, os.X_OK)
        done = subprocess.run(
            [*argv, "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, (name, done.stderr)
        assert done.stdout.startswith(f"usage: fleetpulse {' '.join(argv[1:])}"), done.stdout


def test_systemd_analyze_verifies_every_unit(units: dict[str, Unit], tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze not found: install systemd to verify the units"
    written = write_units(list(SERVICES), UnitOptions(find_executable()), tmp_path)
    done = subprocess.run(
        [analyze, "verify", *map(str, written)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Any warning (an unknown key, a missing executable) is a failure too.
    assert (done.returncode, done.stdout + done.stderr) == (0, ""), done.stderr


def test_options_set_the_user_the_env_file_and_what_may_be_written(tmp_path: Path) -> None:
    options = UnitOptions(
        Path("/opt/fleetpulse/bin/fleetpulse"),
        user="metrics",
        env_file=Path("/etc/metrics/all.env"),
        home=Path("/srv/fleetpulse"),
        read_write=(Path("/backups/repo"),),
    )
    (sink,) = select("sink")
    unit = _parse(render(sink, options))
    assert _one(unit, "Service", "User") == "metrics"
    assert unit["Service"]["EnvironmentFile"] == ["/etc/metrics/all.env", "-/etc/metrics/sink.env"]
    assert _one(unit, "Service", "ExecStart") == "/opt/fleetpulse/bin/fleetpulse sink"
    # Not under /var/lib: no StateDirectory (the folder is made at install), still writable.
    assert "StateDirectory" not in unit["Service"]
    assert _one(unit, "Service", "ReadWritePaths") == "/srv/fleetpulse /backups/repo"


def test_the_default_units_leave_the_simulator_out() -> None:
    assert [s.name for s in select(None)] == ["agent", "stream", "sink", "registry", "backup"]
    assert [s.name for s in select("all")] == [s.name for s in SERVICES]
    assert [s.name for s in select("sink, agent")] == ["agent", "sink"]
    with pytest.raises(UnitError, match="unknown service sinks: choose from agent, simulate"):
        select("sinks")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (UnitOptions(Path("/bin/fleetpulse"), user="Bad User"), "not a valid system user"),
        (UnitOptions(Path("/bin/fleetpulse"), env_file=Path("f.env")), "must be an absolute"),
        (UnitOptions(Path("/my dir/fleetpulse")), "may not hold whitespace"),
        (
            UnitOptions(Path("/bin/fleetpulse"), read_write=(Path("/ok"), Path("rel"))),
            "--read-write rel must be an absolute",
        ),
        (UnitOptions(Path("/bin/fleetpulse"), home=Path("/var/lib/50%")), "'%'"),
    ],
)
def test_options_systemd_would_misread_are_refused(
    options: UnitOptions, message: str, tmp_path: Path
) -> None:
    with pytest.raises(UnitError, match=message):
        write_units(select(None), options, tmp_path)
    assert not list(tmp_path.iterdir())


def test_the_command_prints_what_it_wrote_and_how_to_install_it(tmp_path: Path) -> None:
    done = _cli("systemd", "--output", str(tmp_path / "units"), "--user", "fp")
    assert done.returncode == 0, done.stderr
    written = sorted((tmp_path / "units").iterdir())
    assert [p.name for p in written] == sorted(f"fleetpulse-{s.name}.service" for s in select(None))
    for path in written:
        assert f"wrote {path}" in done.stdout
    for line in (
        "useradd --system --user-group --home-dir /var/lib/fleetpulse",
        "install -m 0600 -o root -g root /dev/null /etc/fleetpulse/fleetpulse.env",
        "systemctl daemon-reload",
        "systemctl enable --now fleetpulse-agent.service",
    ):
        assert line in done.stdout
    assert " fp\n" in done.stdout  # the user made is the one the units run as


def test_a_bad_option_is_one_line_with_exit_1(tmp_path: Path) -> None:
    done = _cli("systemd", "--output", str(tmp_path), "--services", "nope")
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("fleetpulse: error: unknown service nope: choose from")
    done = _cli("systemd", "--output", str(tmp_path), "--executable", "/nonexistent/fleetpulse")
    assert done.returncode == 1
    assert "/nonexistent/fleetpulse: no such file" in done.stderr
    assert not list(tmp_path.iterdir())
