"""`fleetpulse systemd`: a systemd unit for every long-running service, so that one that dies
(a crash, `kill -9`, the kernel's OOM killer) is started again by the service manager.

Each service already survives a broker or database outage by itself (capped backoff inside
the process); what the unit adds is the restart after the process itself is gone, rate
limited so that a service that cannot start is marked failed instead of looping forever.

The resource limits are sized from what the services were measured to use (`BENCHMARKS.md`,
and the demo's children at 200 hosts: 2-3 threads and 6-13 open files each): `MemoryHigh` at
about three times the peak seen (the kernel reclaims and throttles above it), `MemoryMax` at
twice that (the OOM killer ends the service there, and `Restart=on-failure` brings it back).
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from runtime.errors import FleetPulseError

#: Where the units go by default, relative to the working directory (copied from there).
DEFAULT_OUTPUT: Final = Path("systemd")
DEFAULT_USER: Final = "fleetpulse"
DEFAULT_ENV_FILE: Final = Path("/etc/fleetpulse/fleetpulse.env")
#: FLEETPULSE_HOME on a host: under /var/lib, so systemd's StateDirectory= creates it.
DEFAULT_HOME: Final = Path("/var/lib/fleetpulse")

#: The restart policy, the same for every unit. A service that survives outages by itself and
#: still exits five times within ten minutes has a problem a restart will not fix: systemd
#: then stops trying and marks the unit failed (`systemctl status` says so, `OnFailure=`
#: hooks fire); `systemctl reset-failed` and a start try again.
START_LIMIT_INTERVAL: Final = "10min"
START_LIMIT_BURST: Final = 5
RESTART_SEC: Final = "5s"
#: Exit status 2 is an invalid setting (or command line): it fails again on every start.
NO_RESTART_STATUS: Final = 2
#: Every service stops within its `stop_timeout` (10 s) plus as long for `close()`; systemd
#: sends SIGKILL after this.
TIMEOUT_STOP: Final = "30s"


@dataclass(frozen=True)
class ServiceUnit:
    """One service as systemd runs it."""

    name: str  # the unit is fleetpulse-<name>.service
    args: tuple[str, ...]  # the `fleetpulse` subcommand
    description: str
    memory_high: str
    memory_max: str
    why_memory: str  # the measurement the figures come from
    tasks_max: int = 64
    nofile: int = 4096
    timeout_stop: str = TIMEOUT_STOP
    default: bool = True  # written when --services is not given

    @property
    def unit_name(self) -> str:
        return f"fleetpulse-{self.name}.service"


#: Every long-running `fleetpulse` command (the one-shot commands, `stack` and `demo` have no
#: unit: Kafka and PostgreSQL come with units of their own on a host).
SERVICES: Final = (
    ServiceUnit(
        "agent",
        ("agent",),
        "FleetPulse host agent: this host's metrics every second to Kafka",
        "128M",
        "256M",
        "peak RSS 45 MiB (benchmark), 48 MiB in the demo",
    ),
    ServiceUnit(
        "simulate",
        ("simulate",),
        "FleetPulse fleet simulator: FLEETPULSE_HOSTS simulated hosts at 1 Hz (load tests)",
        "256M",
        "512M",
        "58 MiB at 5,000 hosts, 91 MiB peak in its benchmark",
        default=False,  # a load generator: only where one is wanted (--services simulate)
    ),
    ServiceUnit(
        "stream",
        ("stream",),
        "FleetPulse stream worker: raw events into 5 s, hourly and daily windows",
        "512M",
        "1G",
        "154 MiB live at 5,000 hosts, 190 MiB catching up a 6,000-host backlog; "
        "its state grows with hosts x open windows",
    ),
    ServiceUnit(
        "sink",
        ("sink",),
        "FleetPulse sink: the aggregate topics into PostgreSQL",
        "256M",
        "512M",
        "58 MiB at 5,000 hosts",
    ),
    ServiceUnit(
        "registry",
        ("registry",),
        "FleetPulse registry: users, servers and metrics API, is_online from the status topic",
        "256M",
        "512M",
        "72 MiB with its status consumer and an idle API; grows with live-view browsers",
        nofile=65536,  # one descriptor per HTTP client and per live-view stream
    ),
    ServiceUnit(
        "backup",
        ("backup", "schedule"),
        "FleetPulse backup schedule: pgBackRest base backups and daily dumps",
        "512M",
        "1G",
        "60 MiB itself; pgBackRest (2 processes) and pg_dump run in its cgroup",
        tasks_max=128,
        # A stop waits for a backup in progress (it runs in a thread); after this systemd
        # kills the whole cgroup, pgBackRest included, whose next run resumes the backup.
        timeout_stop="2min",
    ),
)
BY_NAME: Final = {s.name: s for s in SERVICES}

_USER = re.compile(r"[a-z_][a-z0-9_-]{0,30}\$?")
_UNSAFE = re.compile(r"[\s%\"'\\;]")  # whitespace, specifiers, quoting: not in unit paths


class UnitError(FleetPulseError):
    """Options the units cannot be written from (printed as one line)."""


@dataclass(frozen=True)
class UnitOptions:
    """What every unit shares: who runs it, where it reads its settings, what it may write."""

    executable: Path
    user: str = DEFAULT_USER
    env_file: Path = DEFAULT_ENV_FILE
    home: Path = DEFAULT_HOME
    read_write: tuple[Path, ...] = ()  # more writable folders (backup repository, dumps)

    def validate(self) -> None:
        """Raise `UnitError` for what systemd would refuse or misread (no I/O)."""
        if not _USER.fullmatch(self.user):
            raise UnitError(f"--user {self.user!r} is not a valid system user name")
        paths = [
            ("--executable", self.executable),
            ("--env-file", self.env_file),
            ("--home", self.home),
            *(("--read-write", p) for p in self.read_write),
        ]
        for option, path in paths:
            if not path.is_absolute():
                raise UnitError(f"{option} {path} must be an absolute path")
            if _UNSAFE.search(str(path)):
                raise UnitError(
                    f"{option} {path}: a path in a unit file may not hold whitespace, quotes, "
                    "backslashes, ';' or '%'"
                )


def find_executable() -> Path:
    """The installed `fleetpulse` script: beside the running Python (its virtualenv), else on
    PATH. Raises `UnitError` when there is none."""
    beside = Path(sys.executable).parent / "fleetpulse"
    if beside.is_file():
        return beside.absolute()
    found = shutil.which("fleetpulse")
    if found is None:
        raise UnitError(
            f"no `fleetpulse` executable beside {sys.executable} or on PATH: install the "
            "project (`pip install .` into the host's virtualenv) or pass --executable"
        )
    return Path(found).absolute()


def select(names: str | None) -> list[ServiceUnit]:
    """The services named in a comma-separated list (`all`: every one; None: the defaults)."""
    if names is None:
        return [s for s in SERVICES if s.default]
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if wanted == ["all"]:
        return list(SERVICES)
    unknown = [n for n in wanted if n not in BY_NAME]
    if unknown or not wanted:
        raise UnitError(
            f"unknown service {', '.join(unknown) or '(none given)'}: choose from "
            f"{', '.join(BY_NAME)} or all"
        )
    return [s for s in SERVICES if s.name in wanted]


def _state_directory(home: Path) -> str | None:
    """The StateDirectory= that makes `home`, when it lies under /var/lib."""
    try:
        return str(home.relative_to("/var/lib"))
    except ValueError:
        return None


def render(service: ServiceUnit, options: UnitOptions) -> str:
    """The text of `service`'s unit file."""
    o = options
    own_env = o.env_file.parent / f"{service.name}.env"
    writable = " ".join(str(p) for p in (o.home, *o.read_write))
    state = _state_directory(o.home)
    lines = [
        f"# {service.unit_name}, written by `fleetpulse systemd` (edits are lost on a re-run).",
        "[Unit]",
        f"Description={service.description}",
        # The services wait for Kafka and PostgreSQL themselves: no Requires= on either.
        "After=network-online.target",
        "Wants=network-online.target",
        f"# At most {START_LIMIT_BURST} starts in {START_LIMIT_INTERVAL}; then the unit is "
        "failed until `systemctl reset-failed`.",
        f"StartLimitIntervalSec={START_LIMIT_INTERVAL}",
        f"StartLimitBurst={START_LIMIT_BURST}",
        "",
        "[Service]",
        "Type=exec",
        f"User={o.user}",
        f"Environment=FLEETPULSE_HOME={o.home}",
        "Environment=PYTHONUNBUFFERED=1",
        "# Settings for every service, then this one's own (optional); later files win.",
        f"EnvironmentFile={o.env_file}",
        f"EnvironmentFile=-{own_env}",
        f"WorkingDirectory={o.home}",
        f"ExecStart={o.executable} {' '.join(service.args)}",
        f"SyslogIdentifier=fleetpulse-{service.name}",
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        f"RestartPreventExitStatus={NO_RESTART_STATUS}",
        f"TimeoutStopSec={service.timeout_stop}",
        f"# Memory: {service.why_memory}.",
        f"MemoryHigh={service.memory_high}",
        f"MemoryMax={service.memory_max}",
        "# 2-3 threads measured; asyncio's default executor may grow to min(32, cores + 4).",
        f"TasksMax={service.tasks_max}",
        f"LimitNOFILE={service.nofile}",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        *([f"StateDirectory={state}", "StateDirectoryMode=0750"] if state else []),
        f"ReadWritePaths={writable}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def write_units(services: list[ServiceUnit], options: UnitOptions, output: Path) -> list[Path]:
    """Write one unit file per service under `output` (made if missing); their paths."""
    options.validate()
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for service in services:
        path = output / service.unit_name
        path.write_text(render(service, options))
        written.append(path)
    return written


def install_commands(written: list[Path], options: UnitOptions) -> list[str]:
    """The shell commands that install the written units on this host (as root)."""
    units = " ".join(p.name for p in written)
    env_dir = options.env_file.parent
    home_made = _state_directory(options.home) is not None
    return [
        f"useradd --system --user-group --home-dir {options.home} --shell /usr/sbin/nologin "
        f"{options.user}",
        f"install -d -m 0755 {env_dir}",
        f"install -m 0600 -o root -g root /dev/null {options.env_file}   "
        "# then fill it in (see README)",
        *([] if home_made else [f"install -d -m 0750 -o {options.user} {options.home}"]),
        f"cp {' '.join(str(p) for p in written)} /etc/systemd/system/",
        "systemctl daemon-reload",
        f"systemctl enable --now {units}",
    ]
