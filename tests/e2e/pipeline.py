"""The real services as subprocesses on topics, consumer groups and a database of their own:
the stream worker, the sink and the registry (with its status consumer)."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from pydantic import SecretStr

from infra.settings import StackSettings
from infra.stack.process import free_port
from registry.service import create_admin
from registry.settings import RegistrySettings
from runtime.topics import create_topics
from schemas.topics import TopicSpec
from tests.conftest import ROOT
from tests.factories import TEST_KEYS, server_body
from tests.registry.harness import create_database, drop_database
from tests.streams.worker import Topics

ADMIN, PASSWORD = "e2e@fleetpulse.test", "e2e-password-Kq3"
PARTITIONS = 4  # of each topic `running_pipeline` creates


@dataclass
class Pipeline:
    """stream → sink → PostgreSQL, and the registry, started by `start()`: `streams` stream
    workers in one consumer group and `sinks` sinks in another, named `stream`, `stream-2`, …
    and `sink`, `sink-2`, …; each service logs to `logs/<name>.log`."""

    stack: StackSettings
    topics: Topics
    database: str
    logs: Path
    streams: int = 1
    sinks: int = 1
    port: int = field(default_factory=free_port)
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    #: The /metrics port of a service, by name (the others serve none).
    metrics_ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @functools.cached_property
    def verify(self) -> ssl.SSLContext:
        """Trusts the stack's CA, which issued the registry's certificate (`stack up`)."""
        return ssl.create_default_context(cafile=self.stack.home_dir / "tls" / "ca.crt")

    @property
    def stream_group(self) -> str:
        return f"e2e-stream-{self.suffix}"

    @property
    def sink_group(self) -> str:
        return f"e2e-sink-{self.suffix}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.topics.env(),
            "FLEETPULSE_PG_DATABASE": self.database,
            "FLEETPULSE_STREAM_GROUP": self.stream_group,
            "FLEETPULSE_OFFLINE_AFTER": "4",
            "FLEETPULSE_SINK_GROUP": self.sink_group,
            "FLEETPULSE_REGISTRY_GROUP": f"e2e-registry-{self.suffix}",
            "FLEETPULSE_REGISTRY_PORT": str(self.port),
            "FLEETPULSE_REGISTRY_KEYS": TEST_KEYS,
        }

    async def _service(self, verb: str, name: str) -> asyncio.subprocess.Process:
        env = self.env()
        if name in self.metrics_ports:
            env["FLEETPULSE_METRICS_PORT"] = str(self.metrics_ports[name])
        with (self.logs / f"{name}.log").open("wb") as log:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "infra.cli", verb,
                env=env, cwd=ROOT, stdout=log, stderr=log,
            )  # fmt: skip

    async def start(self) -> None:
        for verb, count in (("stream", self.streams), ("sink", self.sinks)):
            for n in range(1, count + 1):
                name = verb if n == 1 else f"{verb}-{n}"
                self.procs[name] = await self._service(verb, name)
        self.procs["registry"] = await self._service("registry", "registry")
        async with httpx.AsyncClient(verify=self.verify) as client, asyncio.timeout(60):
            while True:
                try:
                    if (await client.get(f"{self.base_url}/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert self.procs["registry"].returncode is None, self.log("registry")
                await asyncio.sleep(0.3)

    def kill(self, *names: str) -> None:
        """SIGKILL: no flush, no commit, no goodbye to the consumer group."""
        for name in names:
            self.procs[name].kill()
            self.killed.add(name)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def all_logs(self) -> str:
        """The end of every service's log, for a failure message."""
        return "".join(f"\n--- {name} ---\n{self.log(name)}" for name in self.procs)

    async def stop(self) -> dict[str, int | None]:
        """SIGTERM every service still running; their exit statuses (-9 for those killed).
        One that has not exited after 60 s is killed."""
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(60):
                for proc in self.procs.values():
                    await proc.wait()
        finally:
            for proc in self.procs.values():
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        return {name: proc.returncode for name, proc in self.procs.items()}

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(**self.stack.connect_kwargs(database=self.database))

    async def request(
        self, method: str, path: str, token: str | None = None, **kw: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=30, verify=self.verify
        ) as client:
            return await client.request(method, path, headers=headers, **kw)


async def wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    """Poll the coroutine function `check` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last seen: {last!r})")


@asynccontextmanager
async def running_pipeline(
    stack: StackSettings,
    logs: Path,
    *,
    streams: int = 1,
    sinks: int = 1,
    metrics_ports: dict[str, int] | None = None,
) -> AsyncIterator[tuple[Pipeline, str]]:
    """A started pipeline on topics and a migrated database of its own, and an admin token for
    its registry. On exit every service is stopped (SIGTERM) and the database dropped; each
    service not killed must have exited 0."""
    s = uuid.uuid4().hex[:8]
    topics = Topics(*(f"e2e.{name}.{s}" for name in ("raw", "a5", "a1h", "a1d", "st", "dlq")))
    await create_topics(stack, [TopicSpec(n, PARTITIONS, 3_600_000) for n in vars(topics).values()])
    database = await asyncio.to_thread(create_database, stack)
    settings = RegistrySettings(pg_database=database, registry_keys=SecretStr(TEST_KEYS))
    await create_admin(settings, ADMIN, "E2E", PASSWORD)
    p = Pipeline(
        stack, topics, database, logs, streams=streams, sinks=sinks,
        metrics_ports=metrics_ports or {},
    )  # fmt: skip
    try:
        await p.start()
        r = await p.request("POST", "/login", json={"email": ADMIN, "password": PASSWORD})
        assert r.status_code == 200, r.text
        yield p, r.json()["access_token"]
    finally:
        codes = await p.stop()
        await asyncio.to_thread(drop_database, stack, database)
    failed = {n: code for n, code in codes.items() if n not in p.killed and code != 0}
    assert not failed, (failed, p.all_logs())


async def register(p: Pipeline, token: str, *server_ids: str) -> None:
    """Register the servers through the registry's API (a sink dead-letters unknown ones)."""
    for sid in server_ids:
        r = await p.request("POST", "/servers", token, json=server_body(id=sid))
        assert r.status_code == 201, r.text
