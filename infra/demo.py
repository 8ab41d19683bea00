"""`fleetpulse demo`: the whole pipeline on the local stack, with live numbers.

It brings the stack up, creates the topics, applies the migrations (as the database's owner),
registers this machine and the simulated hosts in the registry's `servers` table and creates a
demo admin (first run only; the password is kept in a 0600 file so a re-run prints it again),
both as the registry's database role, then runs the agent, the simulator, the stream worker,
the sink and the registry as child processes (the sink and the registry log in as their own
roles). The numbers on screen come from Kafka (end offsets, consumer groups' committed offsets)
and PostgreSQL (row counts), never from the children's logs. A child that exits while the demo
runs (a crash, `kill -9`) is started again after a delay that grows with each exit in a row
(`Supervisor`). Ctrl-C (or SIGTERM, or `--seconds`) stops every child: SIGTERM, then SIGKILL
after a timeout, and nothing is restarted. A re-run reuses the stack, the ids and the data.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Final, Protocol

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from pydantic import SecretStr
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from alerts import store as alert_store
from alerts.rules import MAX_SCOPE, Metric, Op, RuleKind, RuleSpec, Severity, Stat
from infra import stack
from infra.db import migrate
from infra.lag import group_lag, partitions
from infra.settings import StackSettings
from infra.stack.monitoring import Alertmanager
from infra.stack.tls import TlsFiles
from producers.simulator import simulated_server_id
from registry import inventory
from registry.crypto import load_keyring
from registry.errors import Conflict
from registry.models import ServerCategory, ServerCreate
from registry.service import create_admin
from registry.settings import RegistrySettings
from runtime import kafka, postgres
from runtime.backoff import Backoff
from runtime.errors import FleetPulseError
from runtime.settings import PostgresSettings
from runtime.topics import create_contract_topics
from schemas import DLQ, RAW, RESOLUTIONS
from sinks.settings import SinkSettings
from streams.settings import StreamSettings

ADMIN_EMAIL: Final = "admin@fleetpulse.demo"
#: Seconds a child gets between SIGTERM and SIGKILL.
STOP_TIMEOUT: Final = 20.0
#: Seconds between two samples of the live numbers.
POLL_EVERY: Final = 1.5
#: Samples the rates are computed over (about 10 s).
RATE_SAMPLES: Final = 7
#: The order children start in; they are stopped producers first.
ROLES: Final = ("backup", "registry", "sink", "stream", "alerts", "agent", "simulate")
#: Seconds before a child that exited is started again; doubled (jittered) for each exit in a
#: row, up to RESTART_CAP, so a child that cannot start is retried twice a minute, not in a
#: tight loop.
RESTART_FIRST: Final = 1.0
RESTART_CAP: Final = 30.0
#: A child that ran this long before it exited was healthy: its next restart waits
#: RESTART_FIRST again.
RESTART_STABLE: Final = 60.0
#: The demo's alert rules, and when the silent simulated host (index 0) goes quiet and for
#: how long: its absence alert fires about 40 s into the silence and resolves after it.
CPU_RULE: Final = "demo: this machine's CPU over 90 % for 30 s"
ABSENT_RULE: Final = "demo: a simulated host absent for 30 s"
SILENT_AFTER: Final = 60
SILENT_FOR: Final = 90
#: Seconds between two looks at the children.
SUPERVISE_EVERY: Final = 0.5


@dataclass(frozen=True)
class DemoOptions:
    hosts: int = 200
    seed: int = 42
    seconds: float | None = None


def describe_exit(code: int) -> str:
    """A child's exit status as an operator reads it: `exit status 1`, `killed by SIGKILL`."""
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _restart_backoff() -> Backoff:
    return Backoff(RESTART_FIRST, RESTART_CAP)


@dataclass
class Child:
    """One service the demo runs, with its output going to `log_path`."""

    name: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)  # over the demo's own environment
    restarts: int = 0  # times the supervisor started it again
    started_at: float = 0.0  # monotonic time of the last start
    last_exit: int | None = None  # status of the last exit the supervisor saw
    restart_at: float | None = None  # monotonic time of the restart it waits for
    backoff: Backoff = field(default_factory=_restart_backoff)

    @property
    def state(self) -> str:
        if self.proc is None:
            return "not started"
        code = self.proc.poll()
        if code is None:
            return "running"
        if self.restart_at is not None:
            wait = max(self.restart_at - time.monotonic(), 0.0)
            return f"{describe_exit(code)}, restart in {wait:.0f} s"
        return f"exited ({code})"

    def note(self, text: str) -> None:
        """A line of the demo's own in the child's log, between the child's lines (best
        effort: a log that cannot be written fails the child's start, not the supervisor)."""
        with suppress(OSError):
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as log:
                stamp = datetime.now(UTC).isoformat()
                log.write(f"\n--- {stamp} fleetpulse demo {text}\n".encode())


@dataclass(frozen=True)
class DemoPaths:
    home: Path

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def server_id(self) -> Path:
        return self.home / "demo" / "server_id"

    @property
    def children(self) -> Path:
        return self.home / "demo" / "children.json"

    @property
    def admin_password(self) -> Path:
        return self.home / "secrets" / "demo_admin_password"


# -- ids, servers, admin ------------------------------------------------------------------------
def this_server_id(paths: DemoPaths) -> str:
    """This machine's server id: made once, kept under the home folder, reused by re-runs."""
    if paths.server_id.exists():
        return str(uuid.UUID(paths.server_id.read_text().strip()))
    paths.server_id.parent.mkdir(parents=True, exist_ok=True)
    server_id = str(uuid.uuid4())
    paths.server_id.write_text(server_id + "\n")
    return server_id


def _simulated_address(index: int) -> str:
    return str(ipaddress.IPv4Address("10.128.0.0") + index + 1)


async def register_servers(
    settings: RegistrySettings, own_id: str, hosts: int, seed: int
) -> tuple[int, int]:
    """This machine and the simulated hosts in `servers`; returns (added, already there).

    The rows are made by `registry.inventory`, as `POST /servers` makes them (the SSH password
    encrypted with the registry's key, bound to the row's id), all in one transaction; demo
    hosts get a random password nobody needs.
    """
    keyring = load_keyring(settings, create=True)
    wanted = [(own_id, socket.getfqdn(), "this machine", "127.0.0.1", ServerCategory.PHYSICAL)]
    wanted += [
        (
            simulated_server_id(seed, i),
            f"sim-{i:04d}-{simulated_server_id(seed, i)[:8]}.fleetpulse.demo",
            f"simulated {i}",
            _simulated_address(i),
            ServerCategory.VIRTUAL,
        )
        for i in range(hosts)
    ]
    conn = await postgres.connect(settings)
    try:
        rows = await conn.fetch("SELECT id, hostname FROM servers")
        known = {r["id"] for r in rows}
        hostnames = {r["hostname"] for r in rows}
        new = []
        for server_id, hostname, name, address, category in wanted:
            if server_id in known:
                continue
            if hostname in hostnames:  # another id took this name: keep both apart
                hostname = f"{hostname}-{server_id[:8]}"
            new.append(
                ServerCreate(
                    id=uuid.UUID(server_id),
                    name=name,
                    hostname=hostname,
                    ip_address=ipaddress.ip_address(address),
                    username="fleetpulse",
                    password=SecretStr(secrets.token_urlsafe(24)),
                    server_category=category,
                )
            )
        await inventory.create_servers(conn, keyring, new)
    finally:
        await conn.close()
    return len(new), len(wanted) - len(new)


async def ensure_admin(settings: RegistrySettings, paths: DemoPaths) -> str | None:
    """The demo admin's password: created on the first run, read back from its file after.

    Returns None when an admin with the demo e-mail exists but its password file is gone.
    """
    path = paths.admin_password
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(18)
    try:
        await create_admin(settings, ADMIN_EMAIL, "Demo admin", password)
    except Conflict:
        return None  # created by an earlier run whose password file was removed
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


# -- children ------------------------------------------------------------------------------------
def plan_children(paths: DemoPaths, options: DemoOptions, own_id: str) -> list[Child]:
    args = {
        # The backup schedule: a full backup and dump at once on a new stack, then by the
        # timetable (FLEETPULSE_BACKUP_DAILY_AT, FLEETPULSE_BACKUP_DIFF_EVERY).
        "backup": ["backup", "schedule"],
        "registry": ["registry"],
        "sink": ["sink"],
        "stream": ["stream"],
        "alerts": ["alerts"],
        "agent": ["agent", "--server-id", own_id],
        "simulate": ["simulate", "--hosts", str(options.hosts), "--seed", str(options.seed)],
    }
    children = [Child(name, args[name], paths.logs / f"{name}.log") for name in ROLES]
    for child in children:
        if child.name == "simulate":
            # One simulated host goes silent for a while: its absence alert fires, then
            # resolves when it is heard of again.
            # (Each unless the environment sets it: the demo's test keeps every host.)
            silence = {
                "FLEETPULSE_SIM_SILENT_HOST": "0",
                "FLEETPULSE_SIM_SILENT_AFTER": str(SILENT_AFTER),
                "FLEETPULSE_SIM_SILENT_FOR": str(SILENT_FOR),
            }
            child.env = {k: v for k, v in silence.items() if k not in os.environ}
    return children


async def ensure_rules(settings: RegistrySettings, own_id: str, hosts: int, seed: int) -> int:
    """The demo's two alert rules, unless rules of those names exist; returns how many were
    created. Made by `alerts.store`, as `POST /alerts/rules` makes them."""
    simulated = [uuid.UUID(simulated_server_id(seed, i)) for i in range(min(hosts, MAX_SCOPE))]
    wanted = [
        RuleSpec(
            name=CPU_RULE,
            kind=RuleKind.THRESHOLD,
            metric=Metric.CPU,
            stat=Stat.AVG,
            op=Op.GT,
            value=90.0,
            for_seconds=30,
            severity=Severity.CRITICAL,
            servers=[uuid.UUID(own_id)],
        ),
        RuleSpec(
            name=ABSENT_RULE,
            kind=RuleKind.ABSENCE,
            for_seconds=30,
            severity=Severity.WARNING,
            servers=simulated if hosts <= MAX_SCOPE else None,
        ),
    ]
    conn = await postgres.connect(settings)
    try:
        known = {r.name for r in await alert_store.list_rules(conn)}
        made = 0
        for spec in wanted:
            if spec.name not in known:
                await alert_store.create_rule(conn, spec)
                made += 1
        return made
    finally:
        await conn.close()


def start_child(child: Child, note: str = "starts it") -> None:
    """Start `child` in a session of its own, so a Ctrl-C reaches only the demo, which then
    stops the children in order."""
    child.note(note)
    log: IO[bytes]
    with child.log_path.open("ab") as log:
        child.proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", *child.args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **child.env},
        )
    child.started_at = time.monotonic()


def start_children(children: list[Child], paths: DemoPaths) -> None:
    """Start every child (`start_child`) and record them in `paths.children`."""
    for child in children:
        start_child(child)
    write_children(children, paths)


def write_children(children: list[Child], paths: DemoPaths) -> None:
    """`paths.children`: each child's pid, restarts and last exit status, as JSON (replaced
    whole, so a reader never sees half of it). A later demo stops the pids an earlier one
    left behind; scripts and tests read the restarts."""
    record = {
        c.name: {"pid": c.proc.pid, "restarts": c.restarts, "last_exit": c.last_exit}
        for c in children
        if c.proc is not None
    }
    paths.children.parent.mkdir(parents=True, exist_ok=True)
    tmp = paths.children.with_suffix(".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(paths.children)


class Spawn(Protocol):
    def __call__(self, child: Child, note: str) -> None: ...


class Supervisor:
    """Starts again every child that exits while the demo runs, whatever its status (the
    demo wants the whole pipeline up; each service already rides out Kafka and PostgreSQL
    outages by itself, so an exit is a crash or a kill).

    `check()` looks at each child once: one that has exited is scheduled `backoff.next()`
    seconds later (`RESTART_FIRST`, doubling for each exit in a row up to `RESTART_CAP`,
    jittered; reset when it had run `RESTART_STABLE` s); one whose time has come is started.
    Both are reported (`report`, and a line in the child's log) with the exit status, and
    `paths.children` is rewritten. After `shutdown()` it does nothing: the demo's own stop
    restarts no one.
    """

    def __init__(
        self,
        children: list[Child],
        paths: DemoPaths,
        report: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        spawn: Spawn = start_child,
    ) -> None:
        self.children = children
        self.paths = paths
        self._report = report
        self._clock = clock
        self._spawn = spawn
        self.stopping = False

    def shutdown(self) -> None:
        """No restart from now on (called before the demo stops its children)."""
        self.stopping = True

    def check(self) -> None:
        if self.stopping:
            return
        changed = False
        for child in self.children:
            if child.proc is None:
                continue
            now = self._clock()
            if child.restart_at is None:
                code = child.proc.poll()
                if code is None:
                    continue
                ran = now - child.started_at
                if ran >= RESTART_STABLE:
                    child.backoff.reset()
                delay = child.backoff.next()
                child.restart_at, child.last_exit = now + delay, code
                line = (
                    f"{child.name} (pid {child.proc.pid}) {describe_exit(code)} after {ran:.0f} "
                    f"s; restart {child.restarts + 1} in {delay:.1f} s"
                )
                child.note(f"saw it exit: {line}")
                self._report(line)
                changed = True
            elif now >= child.restart_at:
                changed = True
                old = child.proc.pid
                child.restart_at = None
                try:
                    self._spawn(child, f"restarts it (restart {child.restarts + 1})")
                except OSError as exc:  # no fork, no file: try again later, as for a crash
                    child.restart_at = now + child.backoff.next()
                    self._report(f"{child.name} could not be restarted: {exc}")
                    continue
                child.restarts += 1
                child.started_at = self._clock()
                self._report(
                    f"{child.name} restarted: pid {child.proc.pid} (was {old}), "
                    f"restart {child.restarts}"
                )
        if changed:
            write_children(self.children, self.paths)

    async def run(self, every: float = SUPERVISE_EVERY) -> None:
        """`check()` every `every` seconds until `shutdown()` (or cancelled)."""
        while not self.stopping:
            self.check()
            await asyncio.sleep(every)


def stop_children(children: list[Child], timeout: float = STOP_TIMEOUT) -> dict[str, int]:
    """SIGTERM every running child (producers first), SIGKILL what is left after `timeout`.

    Returns each child's exit status."""
    running = [c.proc for c in reversed(children) if c.proc is not None and c.proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in running:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {c.name: c.proc.returncode for c in children if c.proc is not None}


def stop_leftovers(paths: DemoPaths) -> list[int]:
    """Stop children an earlier demo left behind (it was killed without a chance to stop
    them): those whose recorded pid still runs `infra.cli`. Returns their pids."""
    if not paths.children.exists():
        return []
    stopped = []
    for entry in json.loads(paths.children.read_text()).values():
        pid = entry["pid"] if isinstance(entry, dict) else entry  # older demos: the pid alone
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"infra.cli" in cmdline:
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
    deadline = time.monotonic() + STOP_TIMEOUT
    for pid in stopped:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
    paths.children.unlink()
    return stopped


# -- the live numbers ----------------------------------------------------------------------------
@dataclass
class Sample:
    at: float
    ends: dict[str, int]  # topic → sum of end offsets
    stream_lag: int | None
    sink_lag: int | None
    rows: dict[str, int]  # table → rows
    online: int
    servers: int
    firing: int = 0
    #: The latest alert events, newest first: (status, summary, at).
    alerts: tuple[tuple[str, str, str], ...] = ()


#: The aggregate topics and tables, one each per resolution.
AGGREGATES: Final = tuple(r.topic for r in RESOLUTIONS)
TOPICS: Final = (RAW.name, *AGGREGATES, DLQ.name)
TABLES: Final = tuple(r.table for r in RESOLUTIONS)


@dataclass
class Probe:
    """Reads the pipeline's numbers from Kafka (with the stack's settings, `db`) and
    PostgreSQL (as `reads`' role: the registry's, which may read servers and metrics)."""

    bootstrap: str
    stream_group: str
    sink_group: str
    db: StackSettings
    reads: PostgresSettings
    _consumer: AIOKafkaConsumer | None = None
    _admin: AIOKafkaAdminClient | None = None
    _conn: asyncpg.Connection | None = None
    _partitions: dict[str, list[TopicPartition]] = field(default_factory=dict)

    async def start(self) -> None:
        self._consumer = kafka.consumer(self.db, "demo-probe")
        await self._consumer.start()
        self._admin = kafka.admin(self.db, "demo-admin")
        await self._admin.start()
        self._conn = await postgres.connect(self.reads)
        for topic, parts in (await partitions(self._admin, list(TOPICS))).items():
            self._partitions[topic] = [TopicPartition(topic, p) for p in parts]

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()
        if self._conn is not None:
            await self._conn.close()

    async def _lag(
        self, group: str, topics: tuple[str, ...], ends: dict[TopicPartition, int]
    ) -> int | None:
        assert self._admin is not None and self._consumer is not None
        parts = {t: [tp.partition for tp in self._partitions.get(t, [])] for t in topics}
        lags = await group_lag(self._admin, self._consumer, group, parts, ends)
        return None if lags is None else sum(lag.behind for lag in lags)

    async def sample(self) -> Sample:
        assert self._consumer is not None and self._conn is not None
        tps = [tp for parts in self._partitions.values() for tp in parts]
        ends: dict[TopicPartition, int] = await self._consumer.end_offsets(tps)
        by_topic = {t: sum(ends[tp] for tp in self._partitions.get(t, [])) for t in TOPICS}
        stream_lag = await self._lag(self.stream_group, (RAW.name,), ends)
        sink_lag = await self._lag(self.sink_group, AGGREGATES, ends)
        rows = {t: int(await self._conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}
        counts = await self._conn.fetchrow(
            "SELECT count(*) FILTER (WHERE is_online) AS online, count(*) AS servers FROM servers"
        )
        assert counts is not None  # an aggregate always has a row
        firing = int(
            await self._conn.fetchval("SELECT count(*) FROM alert_state WHERE state = 'firing'")
        )
        events = await self._conn.fetch(
            "SELECT status, body->>'summary' AS summary, created_at FROM alert_events "
            "ORDER BY seq DESC LIMIT 4"
        )
        return Sample(
            time.monotonic(),
            by_topic,
            stream_lag,
            sink_lag,
            rows,
            counts["online"],
            counts["servers"],
            firing,
            tuple((e["status"], e["summary"], f"{e['created_at']:%H:%M:%S}") for e in events),
        )


def render(first: Sample, since: Sample, now: Sample, children: list[Child]) -> Group:
    """The numbers since the demo started (`first`), per second since `since`, and totals."""
    dt = max(now.at - since.at, 1e-6)
    numbers = Table(title="FleetPulse, live", title_justify="left", expand=False)
    numbers.add_column("")
    numbers.add_column("since start", justify="right")
    numbers.add_column("per second", justify="right")
    numbers.add_column("total", justify="right")

    def row(label: str, value: Callable[[Sample], int]) -> None:
        v = value(now)
        rate = (v - value(since)) / dt
        numbers.add_row(label, f"{v - value(first):,}", f"{rate:,.1f}", f"{v:,}")

    def topic(name: str) -> Callable[[Sample], int]:
        return lambda sample: sample.ends[name]

    def table(name: str) -> Callable[[Sample], int]:
        return lambda sample: sample.rows[name]

    row(f"events in ({RAW.name})", topic(RAW.name))
    for r in RESOLUTIONS:
        row(f"{r.label} aggregates out", topic(r.topic))
    for r in RESOLUTIONS:
        row(f"rows in {r.table} ({r.label})", table(r.table))
    row(f"dead letters ({DLQ.name})", topic(DLQ.name))
    state = Table.grid(padding=(0, 2))
    state.add_row(
        "consumer lag:",
        f"stream {'-' if now.stream_lag is None else f'{now.stream_lag:,}'}",
        f"sink {'-' if now.sink_lag is None else f'{now.sink_lag:,}'} messages",
    )
    state.add_row("servers online:", f"{now.online:,} of {now.servers:,}", "")
    state.add_row("alerts firing:", f"{now.firing:,}", "")
    for status, summary, at in now.alerts:
        color = "red" if status == "firing" else "green"
        state.add_row(f"  {at}", f"[{color}]{status}[/]", summary)
    procs = Table.grid(padding=(0, 2))
    for c in children:
        pid = c.proc.pid if c.proc is not None else "-"
        status = c.state
        color = "green" if status == "running" else "red"
        restarts = f"restarts {c.restarts}"
        if c.restarts:
            restarts = f"[yellow]{restarts}[/]"
        procs.add_row(c.name, f"pid {pid}", f"[{color}]{status}[/]", restarts, str(c.log_path))
    return Group(numbers, state, procs)


async def watch(
    probe: Probe,
    children: list[Child],
    console: Console,
    seconds: float | None,
    supervisor: Supervisor,
) -> Sample:
    """Show the numbers until `seconds` pass (forever without) or Ctrl-C, the supervisor
    restarting children meanwhile. Returns the last sample."""
    supervising = asyncio.create_task(supervisor.run(), name="demo-supervisor")
    try:
        await probe.start()
        first = await probe.sample()
        # Rates over the last ~10 s: aggregates come in bursts every 5 s.
        recent: deque[Sample] = deque([first], maxlen=RATE_SAMPLES)
        deadline = None if seconds is None else time.monotonic() + seconds
        with Live(
            render(first, first, first, children), console=console, refresh_per_second=2
        ) as live:
            while deadline is None or time.monotonic() < deadline:
                await asyncio.sleep(POLL_EVERY)
                try:
                    now = await probe.sample()
                except (KafkaError, OSError, asyncpg.PostgresError):
                    continue  # the next tick tries again; the children carry on meanwhile
                live.update(render(first, recent[0], now, children))
                recent.append(now)
        console.print()
        return recent[-1]
    finally:
        supervising.cancel()
        with suppress(asyncio.CancelledError):
            await supervising
        await probe.close()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP stop the demo like Ctrl-C does (children stopped, not orphaned):
    through SIGINT's handler of the moment. Inside `asyncio.run` that one cancels the main
    task at its next await (never in the middle of starting a child); while the children are
    being stopped SIGINT is ignored, and so are these."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if handler is signal.SIG_IGN:
            return
        if callable(handler):
            handler(signal.SIGINT, frame)
            return
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


# -- the demo ------------------------------------------------------------------------------------
async def _prepare_database(settings: StackSettings) -> str:
    conn = await postgres.connect(settings)
    try:
        return (await migrate(conn, storage=settings.pg_storage)).mode
    finally:
        await conn.close()


def _print_access(
    console: Console,
    registry: RegistrySettings,
    paths: DemoPaths,
    own_id: str,
    password: str | None,
) -> None:
    base = f"{registry.scheme}://{registry.registry_host}:{registry.registry_port}"
    # The registry serves the certificate `stack up` issued from the stack's CA.
    ca = TlsFiles.under(registry.home_dir / "tls").ca_cert
    curl = "curl -s" if registry.registry_plain_http else f"curl -s --cacert {ca}"
    console.print(f"Registry: [bold]{base}[/] (OpenAPI at {base}/docs)")
    if password is None:
        console.print(
            f"Admin [bold]{ADMIN_EMAIL}[/]: exists from an earlier run, but its password file "
            f"{paths.admin_password} is gone; change it with PATCH /users/me/password or use "
            "another admin (fleetpulse registry create-admin)."
        )
    else:
        console.print(
            f"Admin: [bold]{ADMIN_EMAIL}[/] password [bold]{password}[/] "
            f"(kept in {paths.admin_password}, mode 0600)"
        )
    login = (
        f"TOKEN=$({curl} {base}/login -H 'Content-Type: application/json' "
        f'-d "{{\\"email\\": \\"{ADMIN_EMAIL}\\", \\"password\\": '
        f'\\"$(cat {paths.admin_password})\\"}}" | jq -r .access_token)'
    )
    window = 'from=$(date -u -d "-1 min" +%FT%TZ)&to=$(date -u +%FT%TZ)'
    bearer = '-H "Authorization: Bearer $TOKEN"'
    chart = f"{base}/servers/{own_id}/chart"
    console.print(
        "This machine's last minute of metrics, then its last 30 minutes drawn "
        f"({chart}, bearer token in the header: saved to chart.html), ready to paste:"
    )
    for line in (
        login,
        f'{curl} "{base}/servers/{own_id}/metrics?{window}&step=1m" {bearer}',
        f'{curl} "{chart}?from=$(date -u -d "-30 min" +%FT%TZ)&step=1m" {bearer} -o chart.html',
    ):
        console.print(line, soft_wrap=True, markup=False, highlight=False)


def _check_port_free(registry: RegistrySettings) -> None:
    with socket.socket() as s:
        # As uvicorn binds: connections of an earlier run in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((registry.registry_host, registry.registry_port))
        except OSError as exc:
            raise FleetPulseError(
                f"the registry's address {registry.registry_host}:{registry.registry_port} is "
                f"taken ({exc.strerror}): stop what uses it or set FLEETPULSE_REGISTRY_PORT"
            ) from None


def run_demo(settings: StackSettings, options: DemoOptions) -> int:
    console = Console()
    console.rule("[bold]FleetPulse demo")
    paths = DemoPaths(settings.home_dir)
    with console.status("starting the local stack (first run: Kafka jars, initdb, TLS)…"):
        for st, started in stack.up(settings):
            verb = "started" if started else "already running"
            console.print(f"[green]✓[/] {st.name} {verb} at {st.address} (pid {st.pid})")
    results = asyncio.run(create_contract_topics(settings, StreamSettings().changelog_topic))
    console.print(f"[green]✓[/] topics: {', '.join(r.spec.name for r in results)}")
    mode = asyncio.run(_prepare_database(settings))
    console.print(f"[green]✓[/] migrations applied ({mode} storage)")

    registry = RegistrySettings()
    _check_port_free(registry)
    own_id = this_server_id(paths)
    added, known = asyncio.run(register_servers(registry, own_id, options.hosts, options.seed))
    console.print(
        f"[green]✓[/] servers: this machine ({own_id}) and {options.hosts} simulated hosts; "
        f"{added} registered now, {known} already there"
    )
    password = asyncio.run(ensure_admin(registry, paths))
    made = asyncio.run(ensure_rules(registry, own_id, options.hosts, options.seed))
    console.print(
        f"[green]✓[/] alert rules: {CPU_RULE!r}, {ABSENT_RULE!r} ({made} created now); "
        f"simulated host 0 goes silent {SILENT_AFTER} s in, for {SILENT_FOR} s"
    )
    am = Alertmanager(settings)
    if am.binary.exists():
        am.start()
        console.print(f"[green]✓[/] Alertmanager at {am.url} (alerts: {am.url}/api/v2/alerts)")
    else:
        console.print(
            "Alertmanager is not installed (infra/scripts/system-deps.sh --monitoring): alerts "
            "go to metrics.alerts.v1 and the history only"
        )

    leftovers = stop_leftovers(paths)
    if leftovers:
        console.print(f"stopped children of an earlier demo: pids {leftovers}")
    children = plan_children(paths, options, own_id)
    probe = Probe(
        settings.kafka_bootstrap,
        StreamSettings().stream_group,
        SinkSettings().sink_group,
        settings,
        registry,
    )
    _print_access(console, registry, paths, own_id, password)
    console.print(
        f"Logs of the children: {paths.logs}/<name>.log. A child that exits is restarted. "
        "Ctrl-C stops everything."
    )

    def report(line: str) -> None:
        console.print(f"{datetime.now().strftime('%H:%M:%S')} [yellow]{line}[/]", highlight=False)

    supervisor = Supervisor(children, paths, report)
    last: Sample | None = None
    with sigterm_as_interrupt():
        try:
            start_children(children, paths)
            console.print(
                "children: "
                + ", ".join(f"{c.name} pid {c.proc.pid}" for c in children if c.proc is not None)
            )
            last = asyncio.run(watch(probe, children, console, options.seconds, supervisor))
        except KeyboardInterrupt:
            if not console.is_terminal:
                console.print()
            console.print("stopping…")
        finally:
            supervisor.shutdown()  # the demo's own stop is no crash: nothing restarts now
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan them
            codes = stop_children(children)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if paths.children.exists():
                paths.children.unlink()
    console.print(
        "children stopped: " + ", ".join(f"{name} {code}" for name, code in codes.items())
    )
    restarted = [c for c in children if c.restarts]
    if restarted:
        console.print(
            "restarted while the demo ran: "
            + ", ".join(
                f"{c.name} {c.restarts}x (last {describe_exit(c.last_exit or 0)})"
                for c in restarted
            )
        )
    if last is not None:
        console.print(
            f"rows in the database: {', '.join(f'{t} {n:,}' for t, n in last.rows.items())}"
        )
    console.print(
        "The stack keeps running (`fleetpulse stack down` stops it); a re-run reuses it and "
        "its data."
    )
    crashed = [
        c.name
        for c in children
        if c.proc is not None and c.proc.returncode not in (0, -signal.SIGTERM)
    ]
    if crashed:
        console.print(f"[red]exited with an error[/]: {', '.join(crashed)} (see their logs)")
    return 1 if crashed else 0
