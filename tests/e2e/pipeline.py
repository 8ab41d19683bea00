"""The real services as subprocesses on topics, consumer groups and a database of their own:
the stream worker, the sink and the registry (with its status consumer)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from infra.settings import StackSettings
from infra.stack.process import free_port
from tests.conftest import ROOT
from tests.registry.conftest import TEST_KEYS
from tests.streams.worker import Topics, start_worker, stop_worker


@dataclass
class Pipeline:
    """stream → sink → PostgreSQL, and the registry, started by `start()`."""

    stack: StackSettings
    topics: Topics
    database: str
    logs: Path
    port: int = field(default_factory=free_port)
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.topics.env(),
            "FLEETPULSE_PG_DATABASE": self.database,
            "FLEETPULSE_SINK_GROUP": f"e2e-sink-{self.suffix}",
            "FLEETPULSE_REGISTRY_GROUP": f"e2e-registry-{self.suffix}",
            "FLEETPULSE_REGISTRY_PORT": str(self.port),
            "FLEETPULSE_REGISTRY_KEYS": TEST_KEYS,
        }

    async def _service(self, verb: str) -> asyncio.subprocess.Process:
        with (self.logs / f"{verb}.log").open("wb") as log:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "infra.cli", verb,
                env=self.env(), cwd=ROOT, stdout=log, stderr=log,
            )  # fmt: skip

    async def start(self) -> None:
        self.procs["stream"] = await start_worker(
            self.stack.kafka_bootstrap, self.topics, f"e2e-stream-{self.suffix}"
        )
        self.procs["sink"] = await self._service("sink")
        self.procs["registry"] = await self._service("registry")
        async with httpx.AsyncClient() as client, asyncio.timeout(60):
            while True:
                try:
                    if (await client.get(f"{self.base_url}/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert self.procs["registry"].returncode is None, self.log("registry")
                await asyncio.sleep(0.3)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text()[-3000:] if path.exists() else ""

    async def stop(self) -> dict[str, int | None]:
        """SIGTERM every service; their exit statuses (the stream's log goes to `logs`)."""
        for name in ("sink", "registry"):
            proc = self.procs[name]
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        stream_log = await stop_worker(self.procs["stream"])
        (self.logs / "stream.log").write_text(stream_log)
        for name in ("sink", "registry"):
            await asyncio.wait_for(self.procs[name].wait(), timeout=30)
        return {name: proc.returncode for name, proc in self.procs.items()}

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(**self.stack.connect_kwargs(database=self.database))

    async def request(
        self, method: str, path: str, token: str | None = None, **kw: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as client:
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
