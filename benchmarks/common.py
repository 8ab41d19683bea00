"""Shared pieces of the benchmarks: machine description, medians, the local stack."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import psutil

from infra import stack
from infra.settings import StackSettings
from infra.stack import PostgresCluster
from producers.simulator import simulated_server_id
from runtime.settings import LazySecurity
from runtime.topics import create_topics
from schemas.resolutions import BASE

#: The first resolution's window, s; at one event a second, also the samples a whole one holds.
WINDOW = BASE.seconds
# Benchmarks run the services on topics and groups of their own, which only `admin` may use
# (the ACLs name the real ones); every child process inherits it.
os.environ.setdefault("FLEETPULSE_KAFKA_SASL_USERNAME", "admin")
#: The security options of a benchmark's own clients (the stack's `admin`).
SECURITY = LazySecurity()


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """The value below which a fraction `q` of `values` lies (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(label: str, values: Sequence[float], fmt: str = "{:,.2f}", *extra: str) -> str:
    """A markdown table row: label, median, range (min to max), then any extra cells."""
    cells = [
        label,
        fmt.format(median(values)),
        f"{fmt.format(min(values))} to {fmt.format(max(values))}",
    ]
    return "| " + " | ".join([*cells, *extra]) + " |"


def stack_up() -> StackSettings:
    """The local stack the end-to-end parts of the benchmarks run against."""
    import asyncio

    settings = StackSettings()
    stack.up(settings)
    asyncio.run(create_topics(settings))
    return settings


async def bench_database(settings: StackSettings) -> str:
    """A new empty database owned by the application role (created as the superuser)."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await PostgresCluster(settings).superuser_connect()
    try:
        await admin.execute(f'CREATE DATABASE "{name}" OWNER "{settings.pg_user}"')
    finally:
        await admin.close()
    return name


async def register_servers(conn: asyncpg.Connection, seed: int, n: int) -> None:
    """Register the `n` simulated servers of `seed` (their metric rows need them)."""
    records = [
        (simulated_server_id(seed, i), f"sim-{i}", f"sim-{i}.bench", 22, "bench", "v1:unused")
        for i in range(n)
    ]
    columns = ["id", "name", "hostname", "port", "username", "encrypted_password"]
    await conn.copy_records_to_table("servers", records=records, columns=columns)


async def drop_database(settings: StackSettings, name: str) -> None:
    admin = await PostgresCluster(settings).superuser_connect()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def drop_topics(bootstrap: str, names: list[str]) -> None:
    """Delete a run's topics (those that exist), so runs do not pile up on the broker's disk."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **SECURITY)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        gone = [n for n in names if n in existing]
        if gone:
            await admin.delete_topics(gone)
    finally:
        await admin.close()


def idle_processes(n: int) -> list[subprocess.Popen[bytes]]:
    """`n` sleeping processes, as on a busy host."""
    return [subprocess.Popen(["sleep", "3600"]) for _ in range(n)]


def kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


ROOT = Path(__file__).resolve().parent.parent


def head() -> str:
    """The short commit of this tree."""
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def checkout(settings: StackSettings, rev: str) -> Path:
    """A worktree of `rev` under the stack's home (made once): the baseline's code."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    path = settings.home_dir / "bench" / f"rev-{sha}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=ROOT, check=True)
    return path


def code_env(code: Path) -> dict[str, str]:
    """Environment for a child that runs the services' code from `code` (a checkout): first
    on the path, and not the working directory (which `python -m` would put before it)."""
    return {"PYTHONPATH": str(code), "PYTHONSAFEPATH": "1"}


def database_env(settings: StackSettings, code: Path) -> dict[str, str]:
    """What a child from `code` needs to log in to the stack's database: nothing when the
    checkout has a role per service; a checkout from before that logs in as the owner, and
    finds the owner's password where `stack up` now keeps it."""
    if (code / "infra" / "db" / "sql" / "0005_roles.postgres.sql").exists():
        return {}
    return {"FLEETPULSE_PG_PASSWORD_FILE": str(settings.password_path)}


def postgres_usage(postmaster: psutil.Process) -> tuple[float, float]:
    """CPU seconds of the postmaster, its live backends and those it has reaped, and the sum of
    their proportional set sizes (shared buffers counted once), bytes."""
    t = postmaster.cpu_times()
    seconds = t.user + t.system + t.children_user + t.children_system
    mem = float(postmaster.memory_full_info().pss)
    for kid in postmaster.children(recursive=True):
        try:
            k = kid.cpu_times()
            seconds += k.user + k.system
            mem += kid.memory_full_info().pss
        except psutil.NoSuchProcess:
            pass
    return seconds, mem
