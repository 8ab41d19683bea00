"""`fleetpulse drill NAME`: kill one part of the running pipeline with kill -9 under load, start
it again after a pause, and check that the database ends up exactly as an uninterrupted run
leaves it.

A drill runs on the local stack (`stack up --brokers 3` for the broker faults) on topics,
consumer groups and a database of its own. Its load is the simulator as a time-lapse (the same
500 hosts' seconds from two and a half minutes before midnight on, several per wall-clock
second), so the run crosses an hour and a day and its hourly and daily rows close too. The
stream worker, the sink and the registry run as the real services, in subprocesses. Each fault
is injected mid-window and the part restarted after a pause; the drill measures how long the
pipeline takes to be back under one second of lag. Then the same load runs again, faster and
with nothing killed, through a second set of topics, groups and database: the reference. The
5 s, hourly and daily rows of the two must be equal, row for row and value for value, and the
drill's DLQ must be empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import re
import signal
import ssl
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from aiokafka import TopicPartition

from infra.db.migrate import migrate
from infra.faults import FAULTS
from infra.lag import group_lag, partitions
from infra.settings import StackSettings
from infra.stack import KafkaCluster, PostgresCluster
from infra.stack.kafka_security import KafkaSecurity
from infra.stack.process import free_port
from runtime import kafka
from runtime.errors import FleetPulseError
from runtime.postgres import POSTGRES_ERRORS
from runtime.topics import create_topics
from schemas.topics import TopicSpec, changelog_topic

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]

PARTITIONS = 6
#: The stream's default grace for hourly and daily windows, s (the drill does not change it).
ROLLUP_GRACE = 5.0
#: Seconds a load may take, once stopped, to deliver what it still holds.
LOAD_FLUSH_TIMEOUT = 300
#: Seconds a fault's rows have to be back within one second of the undisturbed delay.
RECOVERY_TIMEOUT = 240.0
#: The tables a drill compares, with their key columns.
TABLES = {
    "metrics_snapshots": ("server_id", '"timestamp"'),
    "metrics_hourly": ("server_id", "bucket"),
    "metrics_daily": ("server_id", "bucket"),
}


class DrillError(FleetPulseError):
    """A drill could not run (the stack is not up, too few brokers, a service never started)."""


@dataclass(frozen=True)
class DrillOptions:
    hosts: int = 500
    #: Simulated seconds per wall-clock second of the load.
    speed: float = 3.0
    #: Seconds a killed part stays down.
    pause: float = 5.0
    #: Seconds of load before the first fault (the pipeline warms up, then its undisturbed
    #: delay is measured), and after the last recovery.
    lead: float = 25.0
    tail: float = 10.0
    seed: int = 7
    logs: Path = Path(".fleetpulse/drills")
    #: Keep the drill's topics and databases even when it passed (a failed one's are kept).
    keep: bool = False


@dataclass
class FaultResult:
    fault: str
    target: str
    killed_at: float
    #: Seconds from the kill until the newest row in the database was back within one second
    #: of where the undisturbed pipeline keeps it (and the part killed running again, but for
    #: a broker: two of three carry on without it); 0 when the rows never fell behind.
    recovery: float
    #: False if the rows were not back within `RECOVERY_TIMEOUT` (then `recovery` is that).
    recovered: bool = True

    def describe(self) -> str:
        if not self.recovered:
            return f"not back under 1 s of lag within {self.recovery:.0f} s"
        return f"back under 1 s of lag after {self.recovery:6.1f} s"


@dataclass(frozen=True)
class AgentSamples:
    """What reached the raw topic of the agent killed during the broker outage."""

    samples: int
    #: Samples that reached the topic twice (a re-send of the spool after the crash).
    resent: int
    #: Seconds with no sample other than those the agent was not running.
    missing: int
    #: Samples it took in the last seconds before the kill (there must be some: the outage
    #: was on, so these came back from its spool).
    before_kill: int

    @classmethod
    def of(cls, stamps: list[float], sent: int, killed: float, restarted: float) -> AgentSamples:
        missing = 0
        for a, b in itertools.pairwise(stamps):
            gap = round(b - a) - 1
            dead = a >= killed - 2 and b <= restarted + 30  # the kill and the restart
            if gap > 0 and not dead:
                missing += gap
        before = sum(1 for t in stamps if killed - 10 <= t < killed)
        return cls(len(stamps), sent - len(stamps), missing, before)


@dataclass
class Report:
    faults: list[FaultResult]
    hosts: int
    #: Raw events in the fault run's topic, and the reference's: more in the first are
    #: events a producer sent twice (a retry after a failover), which the stream counts once.
    events: int
    reference_events: int
    expected: dict[str, int]
    lost: dict[str, int]
    duplicated: dict[str, int]
    mismatched: dict[str, int]
    dead_letters: int
    examples: list[str] = field(default_factory=list)
    agent: AgentSamples | None = None

    @property
    def recovered(self) -> bool:
        """Every fault's rows came back within `RECOVERY_TIMEOUT` (the data is `passed`)."""
        return all(f.recovered for f in self.faults)

    @property
    def passed(self) -> bool:
        agent_whole = self.agent is None or (not self.agent.missing and self.agent.before_kill > 0)
        return agent_whole and not (
            sum(self.lost.values()) or sum(self.duplicated.values())
            or sum(self.mismatched.values()) or self.dead_letters
        )  # fmt: skip

    def lines(self) -> list[str]:
        out = [f"{f.fault:18} killed {f.target:12} {f.describe()}" for f in self.faults]
        out.append(
            f"load: {self.hosts} hosts, {self.reference_events:,} events "
            f"({self.events - self.reference_events:,} more sent twice through the fault)"
        )
        out.append(
            f"{'table':18} {'expected':>9} {'lost':>6} {'duplicated':>10} {'mismatched':>10}"
        )
        for table, n in self.expected.items():
            out.append(
                f"{table:18} {n:>9,} {self.lost[table]:>6} {self.duplicated[table]:>10} "
                f"{self.mismatched[table]:>10}"
            )
        out.append(f"dead letters: {self.dead_letters}")
        if self.agent:
            a = self.agent
            out.append(
                f"agent: {a.samples} samples, {a.missing} seconds missing outside its own "
                f"downtime, {a.before_kill} from the 10 s before its kill (back from its "
                f"spool), {a.resent} sent twice"
            )
        out += [f"  e.g. {e}" for e in self.examples[:5]]
        if not self.recovered:
            out.append(f"not back under 1 s of lag within {RECOVERY_TIMEOUT:.0f} s")
        out.append("PASS" if self.passed and self.recovered else "FAIL")
        return out


def midnight_lead(lead: int) -> datetime:
    """`lead` simulated seconds (plus the load before the first fault) before the last
    midnight (UTC): the run crosses an hour and a day within minutes."""
    now = datetime.now(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(seconds=lead)


class Run:
    """One pipeline of a drill: its topics, groups and database, its services as
    subprocesses (stream, sink, registry) and its load (the simulator)."""

    def __init__(
        self, stack: StackSettings, options: DrillOptions, tag: str, agent_id: str
    ) -> None:
        self.stack, self.options, self.tag = stack, options, tag
        #: The real agent's server id (this machine, registered in both runs).
        self.agent_id = agent_id
        self.suffix = suffix = f"{tag}-{uuid.uuid4().hex[:6]}"
        self.topics = {
            "FLEETPULSE_RAW_TOPIC": f"drill.raw.{suffix}",
            "FLEETPULSE_AGG_5S_TOPIC": f"drill.a5.{suffix}",
            "FLEETPULSE_AGG_1H_TOPIC": f"drill.a1h.{suffix}",
            "FLEETPULSE_AGG_1D_TOPIC": f"drill.a1d.{suffix}",
            "FLEETPULSE_STATUS_TOPIC": f"drill.st.{suffix}",
            "FLEETPULSE_DLQ_TOPIC": f"drill.dlq.{suffix}",
        }
        self.stream_group = f"drill-stream-{suffix}"
        self.sink_group = f"drill-sink-{suffix}"
        self.database = f"drill_{suffix.replace('-', '_')}"
        self.registry_port = free_port()
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.logs = options.logs
        self.logs.mkdir(parents=True, exist_ok=True)

    @property
    def raw(self) -> str:
        return self.topics["FLEETPULSE_RAW_TOPIC"]

    @property
    def aggregates(self) -> list[str]:
        return [self.topics[f"FLEETPULSE_AGG_{r}_TOPIC"] for r in ("5S", "1H", "1D")]

    @property
    def dlq(self) -> str:
        return self.topics["FLEETPULSE_DLQ_TOPIC"]

    def stack_env(self) -> dict[str, str]:
        """The variables that point a service at this drill's stack (whatever the caller's
        environment points at)."""
        s = self.stack
        return {
            "FLEETPULSE_HOME": str(s.home_dir),
            "FLEETPULSE_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "FLEETPULSE_KAFKA_BROKERS": str(s.kafka_brokers),
            "FLEETPULSE_KAFKA_PROXIED_PORT": "0",
            "FLEETPULSE_KAFKA_PROXY_PORT": "0",
            "FLEETPULSE_PG_HOST": s.pg_host,
            "FLEETPULSE_PG_PORT": str(s.pg_port),
            "FLEETPULSE_PG_SSLMODE": s.pg_sslmode,
        }

    def env(self, **more: str) -> dict[str, str]:
        return {
            **os.environ,
            **self.stack_env(),
            **self.topics,
            # The drill's topics have names of their own, which only the admin user may use.
            "FLEETPULSE_KAFKA_SASL_USERNAME": "admin",
            "FLEETPULSE_KAFKA_SASL_PASSWORD_FILE": str(
                self.stack.home_dir / "secrets" / "kafka" / "admin"
            ),
            "FLEETPULSE_PG_DATABASE": self.database,
            "FLEETPULSE_STREAM_GROUP": self.stream_group,
            "FLEETPULSE_SINK_GROUP": self.sink_group,
            "FLEETPULSE_REGISTRY_GROUP": f"drill-registry-{self.tag}-{self.database[-6:]}",
            "FLEETPULSE_REGISTRY_PORT": str(self.registry_port),
            # A time-lapse runs far ahead of the clock: no server is closed by the wall clock.
            "FLEETPULSE_OFFLINE_AFTER": "86400",
            "FLEETPULSE_METRICS_PORT": "0",
            "FLEETPULSE_HOSTS": str(self.options.hosts),
            "FLEETPULSE_SEED": str(self.options.seed),
            **more,
        }

    async def prepare(self) -> None:
        specs = [TopicSpec(name, PARTITIONS, 7 * 86_400_000) for name in self.topics.values()]
        specs.append(changelog_topic(f"{self.stream_group}-rollups-changelog", PARTITIONS))
        await create_topics(self.stack, specs)
        admin = await PostgresCluster(self.stack).superuser_connect()
        try:
            await admin.execute(f'CREATE DATABASE "{self.database}" OWNER "{self.stack.pg_user}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(**self.stack.connect_kwargs(database=self.database))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        from infra.demo import register_servers
        from registry.settings import RegistrySettings

        s = self.stack
        registry = RegistrySettings(
            home=s.home_dir,
            pg_host=s.pg_host,
            pg_port=s.pg_port,
            pg_sslmode=s.pg_sslmode,
            pg_database=self.database,
        )
        await register_servers(registry, self.agent_id, self.options.hosts, self.options.seed)

    async def start(self, name: str, *args: str, **env: str) -> None:
        """Start service `name` (stream, sink, registry, simulate) with command-line `args`
        and, for the registry, wait until it answers."""
        with (self.logs / f"{self.tag}-{name}.log").open("ab") as out:
            self.procs[name] = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "infra.cli", name, *args,
                env=self.env(**env), cwd=ROOT, stdout=out, stderr=out,
            )  # fmt: skip
        if name == "registry":
            await self.registry_up()

    async def registry_up(self, timeout: float = 60) -> None:
        ca = ssl.create_default_context(cafile=self.stack.home_dir / "tls" / "ca.crt")
        url = f"https://127.0.0.1:{self.registry_port}/health"
        async with httpx.AsyncClient(verify=ca, timeout=5) as client:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(url)).status_code == 200:
                        return
                if self.procs["registry"].returncode is not None:
                    break
                await asyncio.sleep(0.3)
        raise DrillError(f"the drill's registry did not start; see {self.log_path('registry')}")

    def check_alive(self, but: tuple[str, ...] = ()) -> None:
        """Raise if a service exited by itself (the drill's verdict: it must ride out every
        fault but its own kill, `but`)."""
        for name, proc in self.procs.items():
            if name not in ("simulate", *but) and proc.returncode is not None:
                raise DrillError(
                    f"the {name} exited ({proc.returncode}) during the drill; see "
                    f"{self.log_path(name)}"
                )

    async def stop_service(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        if await asyncio.wait_for(proc.wait(), 60) != 0:
            raise DrillError(f"the {name} did not stop cleanly; see {self.log_path(name)}")

    def log_path(self, name: str) -> Path:
        return self.logs / f"{self.tag}-{name}.log"

    def kill(self, name: str) -> int:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        return proc.pid

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def lag(self) -> int | None:
        """Records the stream group is behind on the raw topic plus those the sink group is
        behind on the aggregate topics; None while either has committed nothing."""
        admin = kafka.admin(self.stack, "drill")
        consumer = kafka.consumer(self.stack, "drill")
        await admin.start()
        await consumer.start()
        try:
            total = 0
            for group, topics in (
                (self.stream_group, [self.raw]),
                (self.sink_group, self.aggregates),
            ):
                lags = await group_lag(admin, consumer, group, await partitions(admin, topics))
                if lags is None:
                    return None
                total += sum(lag.behind for lag in lags)
            return total
        finally:
            await consumer.stop()
            await admin.close()

    async def end_offsets(self, topic: str) -> dict[int, int]:
        consumer = kafka.consumer(self.stack, "drill")
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            ends = await consumer.end_offsets(tps)
            begins = await consumer.beginning_offsets(tps)
            return {tp.partition: ends[tp] - begins[tp] for tp in tps}
        finally:
            await consumer.stop()

    async def rows(self) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
        conn = await asyncpg.connect(**self.stack.connect_kwargs(database=self.database))
        try:
            out: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
            for table, key in TABLES.items():
                got: dict[tuple[Any, ...], dict[str, Any]] = {}
                for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY {', '.join(key)}"):
                    got[tuple(r[c.strip('"')] for c in key)] = dict(r)
                out[table] = got
            return out
        finally:
            await conn.close()

    async def drop(self) -> None:
        admin = await PostgresCluster(self.stack).superuser_connect()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await admin.close()
        client = kafka.admin(self.stack, "drill")
        await client.start()
        try:
            names = [*self.topics.values(), f"{self.stream_group}-rollups-changelog"]
            existing = set(await client.list_topics())
            await client.delete_topics([n for n in names if n in existing])
        finally:
            await client.close()


class WaitTimeout(DrillError):
    """What a drill waited for did not happen in time."""


async def wait_for(what: str, check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Poll `check` until true; a failing check (a broker down) is tried again."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except DrillError:
            raise
        except Exception as exc:
            last = exc
        await asyncio.sleep(0.5)
    cause = f" (last error: {last})" if last else ""
    raise WaitTimeout(f"{what}: not within {timeout:.0f} s{cause}")


class Drill:
    """Faults injected one at a time into one run, then its rows against a reference run."""

    def __init__(self, stack: StackSettings, options: DrillOptions) -> None:
        self.stack, self.options = stack, options
        self.agent_samples: AgentSamples | None = None
        self.agent_killed = self.agent_restarted = 0.0
        self.kafka = KafkaCluster(stack)
        self.postgres = PostgresCluster(stack)

    def check_stack(self, faults: list[str]) -> None:
        if self.postgres.process() is None or self.kafka.process() is None:
            raise DrillError("the stack is not running: `fleetpulse stack up --brokers 3` first")
        if any(f.startswith("broker") for f in faults) and len(self.kafka.nodes) < 3:
            raise DrillError(
                "a broker drill needs three brokers (`fleetpulse stack up --brokers 3` in a "
                "FLEETPULSE_HOME of its own): with one, killing it stops the pipeline by design"
            )
        stopped = [n.name for n in self.kafka.nodes if n.process() is None]
        if stopped:
            raise DrillError(f"brokers not running: {', '.join(stopped)}; `fleetpulse stack up`")

    async def run(self, faults: list[str], say: Callable[[str], None] = print) -> Report:
        self.check_stack(faults)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per health check
        o = self.options
        # Midnight comes shortly after the first fault; the load runs until it is well past.
        start = midnight_lead(int((o.lead + 20) * o.speed))
        midnight = start.timestamp() + int((o.lead + 20) * o.speed)
        load = {
            "FLEETPULSE_SIM_START": start.isoformat(),
            "FLEETPULSE_SIM_SPEED": f"{o.speed:g}",
            # Each load delivers all it emitted before it exits: the reference's emits far
            # faster than a broker takes it, and the default 10 s gives up on the rest.
            "FLEETPULSE_FLUSH_TIMEOUT": str(LOAD_FLUSH_TIMEOUT),
            "FLEETPULSE_STOP_TIMEOUT": str(LOAD_FLUSH_TIMEOUT + 30),
        }
        agent_id = str(uuid.uuid4())
        fault_run = Run(self.stack, o, "fault", agent_id)
        reference = Run(self.stack, o, "reference", agent_id)
        results: list[FaultResult] = []
        try:
            say(
                f"drill {', '.join(faults)}: {o.hosts} hosts from {start:%Y-%m-%d %H:%M:%S} "
                f"UTC at {o.speed:g} simulated s per s; logs in {o.logs}"
            )
            await fault_run.prepare()
            for name in ("stream", "sink", "registry"):
                await fault_run.start(name)
            if "agent" in faults:
                await fault_run.start("agent", **self.agent_env(fault_run))
            self.load_start, self.load_wall = start.timestamp(), time.time()
            await fault_run.start("simulate", **load)
            await asyncio.sleep(o.lead)
            self.baseline = await self.measure_baseline(fault_run)
            say(f"  undisturbed, the newest row is {self.baseline:.1f} s behind the load")
            for fault in faults:
                result = await self.inject(fault_run, fault)
                say(f"  {fault:18} killed {result.target}: {result.describe()}")
                results.append(result)
            await asyncio.sleep(o.tail)
            past = midnight + ROLLUP_GRACE + 30 - self.load_now()
            if past > 0:  # the hour and the day must close by the load itself
                await asyncio.sleep(past / o.speed)
            seconds = await self.stop_simulator(fault_run)
            say(f"  load stopped after {seconds} simulated s; the reference run replays them")
            await reference.prepare()
            if "agent" in faults:
                await fault_run.stop_service("agent")
                self.agent_samples = await self.copy_agent(fault_run, reference)
            for name in ("stream", "sink", "registry"):
                await reference.start(name)
            fast = {**load, "FLEETPULSE_SIM_SPEED": "100000"}
            await reference.start("simulate", "--duration", str(seconds), **fast)
            if await reference.procs["simulate"].wait() != 0:
                raise DrillError(f"the reference load failed; see {reference.log_path('simulate')}")
            a = self.agent_samples
            await self.check_load(fault_run, seconds, a.samples + a.resent if a else 0)
            await self.check_load(reference, seconds, a.samples if a else 0)
            end = start.timestamp() + seconds
            report = await self.compare(fault_run, reference, results, end)
            for line in report.lines():
                say(line)
        finally:
            for run in (fault_run, reference):
                await run.stop()
        if report.passed and not o.keep:
            for run in (fault_run, reference):
                await run.drop()
        else:
            names = ", ".join(
                f"drill.*.{r.suffix} and database {r.database}" for r in (fault_run, reference)
            )
            say(f"kept for a look: topics {names}")
        return report

    async def check_load(self, run: Run, seconds: int, agent: int = 0) -> None:
        """A run compares only if every event its load emitted reached its raw topic (what
        the load dropped is no fault of the pipeline's); `agent`: the agent's samples there."""
        want = self.options.hosts * seconds
        got = sum((await run.end_offsets(run.raw)).values()) - agent
        if got < want:
            raise DrillError(
                f"the {run.tag} run's load delivered {got:,} of its {want:,} events; "
                f"see {run.log_path('simulate')}"
            )

    async def stop_simulator(self, run: Run) -> int:
        """Stop the load (SIGTERM: it sends what it holds, then exits) and return how many
        simulated seconds it emitted (whole seconds: a second is sent before a stop is seen)."""
        proc = run.procs["simulate"]
        proc.send_signal(signal.SIGTERM)
        if await asyncio.wait_for(proc.wait(), LOAD_FLUSH_TIMEOUT + 60) != 0:
            raise DrillError(f"the simulator failed; see {run.log_path('simulate')}")
        text = run.log_path("simulate").read_text()
        found = re.findall(r"simulator stopped: (\d+) seconds", text)
        if not found:
            raise DrillError(
                f"the simulator did not say what it sent; see {run.log_path('simulate')}"
            )
        return int(found[-1])

    async def settle(self, run: Run, stall: float = 180) -> None:
        """Wait until both groups have consumed everything, as long as they keep going: a
        large run's reference has minutes of backlog; one that does not shrink for `stall`
        seconds is an error."""
        best: int | None = None
        progress = time.monotonic()

        async def caught_up() -> bool:
            nonlocal best, progress
            lag = await run.lag()
            if lag is not None and (best is None or lag < best):
                best, progress = lag, time.monotonic()
            if time.monotonic() - progress > stall:
                behind = "nothing committed" if best is None else f"{best:,} records behind"
                raise WaitTimeout(
                    f"the {run.tag} run's consumers stopped catching up ({behind} "
                    f"for {stall:.0f} s)"
                )
            return lag == 0

        await wait_for(f"the {run.tag} run's consumers catching up", caught_up, 24 * 3600)

    async def inject(self, run: Run, fault: str) -> FaultResult:
        o = self.options
        # Mid-window: 2.5 s into a 5 s window of simulated time is 2.5/speed s of wall time;
        # any moment of a time-lapse is inside one.
        killed_at = time.monotonic()
        restart: Callable[[], Awaitable[None]]
        if fault in ("stream", "sink", "registry"):
            target = f"pid {run.kill(fault)}"

            async def restart() -> None:
                await run.start(fault)
        elif fault == "agent":
            # A broker outage (every broker killed), and the agent killed in the middle of
            # it: what it sampled meanwhile is only in its spool.
            for n in self.kafka.nodes:
                n.kill()
            await asyncio.sleep(o.pause)
            killed_at = time.monotonic()
            self.agent_killed = time.time()
            target = f"pid {run.kill('agent')}"
            await asyncio.sleep(o.pause)
            await run.start("agent", **self.agent_env(run))
            self.agent_restarted = time.time()

            async def restart() -> None:
                await asyncio.to_thread(self.kafka.start)
        elif fault == "broker-leader":
            node = await self.busiest_leader(run)
            target = node.name
            node.kill()

            async def restart() -> None:
                await asyncio.to_thread(node.start)
        elif fault == "broker-controller":
            quorum = await asyncio.to_thread(KafkaSecurity(self.stack, self.kafka).describe)
            node = self.kafka.node(quorum.leader)
            target = node.name
            killed_at = time.monotonic()
            node.kill()

            async def restart() -> None:
                await asyncio.to_thread(node.start)
        elif fault == "postgres":
            target = "postmaster"
            await asyncio.to_thread(self.kill_postgres)

            async def restart() -> None:
                await asyncio.to_thread(self.postgres.start)
        else:
            raise DrillError(f"no fault {fault!r}; the faults are {', '.join(FAULTS)}")

        async def restart_after_pause() -> None:
            await asyncio.sleep(o.pause)
            await restart()

        restarting = asyncio.create_task(restart_after_pause())
        # With one broker of three down the pipeline carries on: its recovery does not wait
        # for the broker's return. Any other part must be back first.
        needs_restart = not fault.startswith("broker")
        disturbed = False

        async def recovered() -> bool:
            nonlocal disturbed
            if restarting.done():
                restarting.result()  # a failed restart is the drill's failure
            run.check_alive(but=() if restarting.done() else (fault,))
            try:
                late = await self.delay(run) > self.baseline + 1.0
            except POSTGRES_ERRORS:
                disturbed = True  # the database is away: no row lands meanwhile
                raise
            disturbed = disturbed or late
            past_pause = time.monotonic() >= killed_at + o.pause
            back = restarting.done() or not needs_restart
            return past_pause and back and not late

        back = True
        try:
            await wait_for(f"recovery from {fault}", recovered, timeout=RECOVERY_TIMEOUT)
            recovery = time.monotonic() - killed_at if disturbed else 0.0
        except WaitTimeout:
            # Slow is a figure, not the end of the drill: its rows are still compared.
            back, recovery = False, RECOVERY_TIMEOUT
        finally:
            await restarting
        return FaultResult(fault, target, killed_at, recovery, back)

    async def delay(self, run: Run) -> float:
        """How far the newest 5 s row in the database is behind the load, in wall-clock
        seconds (the load's simulated time runs `speed` times as fast)."""
        conn = await asyncpg.connect(
            **self.stack.connect_kwargs(database=run.database) | {"timeout": 5}
        )
        try:
            newest = await conn.fetchval(
                'SELECT extract(epoch FROM max("timestamp"))::float8 FROM metrics_snapshots '
                "WHERE server_id <> $1",  # the agent's samples are on the clock, not the load's
                run.agent_id,
            )
        finally:
            await conn.close()
        if newest is None:
            return float("inf")
        return float((self.load_now() - newest) / self.options.speed)

    def load_now(self) -> float:
        """The second the load is at (epoch seconds of simulated time)."""
        return self.load_start + (time.time() - self.load_wall) * self.options.speed

    async def measure_baseline(self, run: Run, seconds: float = 6.0) -> float:
        """The delay of the undisturbed pipeline: the least over a few seconds (the newest
        row moves in 5 s steps of the load). Lag is what comes on top of it."""
        samples = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                samples.append(await self.delay(run))
            await asyncio.sleep(0.25)
        if not samples or min(samples) == float("inf"):
            raise DrillError(f"no rows reached the database; see the logs in {run.logs}")
        return min(samples)

    def agent_env(self, run: Run) -> dict[str, str]:
        """The real agent, sampling this machine, with its spool under the drill's logs."""
        return {
            "FLEETPULSE_SERVER_ID": run.agent_id,
            "FLEETPULSE_SPOOL_DIR": str(self.options.logs / "agent-spool"),
            "FLEETPULSE_TOP_PROCESSES": "3",
        }

    async def copy_agent(self, run: Run, reference: Run) -> AgentSamples:
        """The agent's samples from the fault run's raw topic, checked for loss around its
        kill, written once each (by timestamp) to the reference's raw topic: what an agent
        that never died would have sent, but for the seconds it was not running."""
        consumer = kafka.consumer(self.stack, "drill")
        producer = kafka.producer(self.stack, "drill")
        await consumer.start()
        await producer.start()
        try:
            tps = [TopicPartition(run.raw, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            key = run.agent_id.encode()
            seen: dict[str, bytes] = {}
            sent = 0

            async def behind() -> bool:
                return any([await consumer.position(tp) < ends[tp] for tp in tps])

            while await behind():
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    for r in records:
                        if r.key == key and r.value is not None:
                            sent += 1
                            stamp = json.loads(r.value)["timestamp"]
                            seen.setdefault(stamp, r.value)
            for value in seen.values():
                await producer.send(reference.raw, value, key=key)
            await producer.flush()
        finally:
            await consumer.stop()
            await producer.stop()
        stamps = sorted(datetime.fromisoformat(t).timestamp() for t in seen)
        return AgentSamples.of(stamps, sent, self.agent_killed, self.agent_restarted)

    async def busiest_leader(self, run: Run) -> Any:
        """The broker leading the raw topic's partition with the most records."""
        sizes = await run.end_offsets(run.raw)
        busiest = max(sizes, key=lambda p: sizes[p])
        admin = kafka.admin(self.stack, "drill")
        await admin.start()
        try:
            (described,) = await admin.describe_topics([run.raw])
        finally:
            await admin.close()
        leader = next(p["leader"] for p in described["partitions"] if p["partition"] == busiest)
        return self.kafka.node(leader)

    def kill_postgres(self) -> None:
        """kill -9 of the postmaster; its backends notice and exit, leaving the data for crash
        recovery at the next start."""
        proc = self.postgres.process()
        if proc is None:
            raise DrillError("PostgreSQL is not running")
        children = proc.children()
        proc.kill()
        psutil.wait_procs([proc, *children], timeout=60)

    async def compare(
        self, run: Run, reference: Run, faults: list[FaultResult], end: float
    ) -> Report:
        """Every row of the reference against the fault run's. Hourly and daily rows count
        when the load itself closed them (their end plus grace before its last second): how
        far the wall clock moved the others on depends on how long each run sat idle."""
        await self.settle(run)
        await self.settle(reference)
        got, want = await run.rows(), await reference.rows()
        expected, lost, duplicated, mismatched = {}, {}, {}, {}
        examples: list[str] = []
        for table in TABLES:
            g, w = got[table], want[table]
            if table != "metrics_snapshots":
                size = 3600 if table == "metrics_hourly" else 86_400
                closed = end - ROLLUP_GRACE - size
                g = {k: v for k, v in g.items() if k[1].timestamp() <= closed}
                w = {k: v for k, v in w.items() if k[1].timestamp() <= closed}
            expected[table] = len(w)
            missing = [k for k in w if k not in g]
            extra = [k for k in g if k not in w]
            wrong = [k for k in w if k in g and not same_row(g[k], w[k])]
            # A row holding more samples than it should has some of them twice.
            twice = [k for k in wrong if g[k]["sample_count"] > w[k]["sample_count"]]
            lost[table], duplicated[table] = len(missing), len(extra) + len(twice)
            mismatched[table] = len(wrong) - len(twice)
            examples += [f"{table} lost {k}" for k in missing[:2]]
            examples += [f"{table} extra {k}" for k in extra[:2]]
            examples += [f"{table} {k}: {g[k]} != {w[k]}" for k in wrong[:2]]
        dead = sum((await run.end_offsets(run.dlq)).values())
        events = sum((await run.end_offsets(run.raw)).values())
        reference_events = sum((await reference.end_offsets(reference.raw)).values())
        return Report(
            faults, self.options.hosts, events, reference_events, expected, lost, duplicated,
            mismatched, dead, examples, self.agent_samples,
        )  # fmt: skip


def same_row(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal rows: every column the same, floating-point ones to 1e-9 relative (a sum of the
    same samples added in another order, as a late one is, may differ in its last digit)."""
    if a.keys() != b.keys():
        return False
    for key, x in a.items():
        y = b[key]
        if isinstance(x, float) and isinstance(y, float):
            if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9):
                return False
        elif x != y:
            return False
    return True


def report_json(report: Report) -> str:
    return json.dumps(
        {
            "faults": [vars(f) for f in report.faults],
            "hosts": report.hosts,
            "events": report.events,
            "reference_events": report.reference_events,
            "expected": report.expected,
            "lost": report.lost,
            "duplicated": report.duplicated,
            "mismatched": report.mismatched,
            "dead_letters": report.dead_letters,
            "agent": vars(report.agent) if report.agent else None,
            "passed": report.passed,
            "recovered": report.recovered,
        }
    )
