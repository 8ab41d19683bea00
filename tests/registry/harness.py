"""The registry under test as a real server: uvicorn in a thread on its own event loop, built
as `fleetpulse registry` builds it (HTTPS with the stack's certificate, the security headers),
an HTTPS client that verifies it against the stack's CA and keeps every response, the log
recorder, databases of its own, and a relay (tests/e2e/relay.py) on an event loop of its own
thread to cut the server off a dependency."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest

from infra.db import migrate
from infra.settings import StackSettings
from infra.stack.tls import TlsFiles
from registry.app import create_app
from registry.crypto import Keyring
from registry.service import build_server, serving_certificate
from registry.settings import RegistrySettings
from runtime.settings import OWNER_ROLE, HomeSettings
from tests.conftest import superuser_connect
from tests.e2e.relay import Relay
from tests.factories import server_body, unique

T = TypeVar("T")


class Recorder(logging.Handler):
    """Every log record of the session, formatted (with tracebacks)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


#: Every logger the registry process writes through, recorded at DEBUG. (Not the root logger:
#: the session goes on with other packages' tests, which should not pay for DEBUG logging.)
SERVER_LOGGERS = ("registry", "uvicorn", "fastapi", "starlette", "asyncpg", "sinks", "schemas")


def run_sync(coro: Any) -> Any:
    return asyncio.run(coro)


def create_database(stack: StackSettings) -> str:
    name = f"registry_{uuid.uuid4().hex[:12]}"

    async def go() -> None:
        admin = await superuser_connect(stack)
        try:
            await admin.execute(f'CREATE DATABASE "{name}" OWNER "{stack.pg_user}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(**stack.connect_kwargs(database=name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    run_sync(go())
    return name


def drop_database(stack: StackSettings, name: str) -> None:
    async def go() -> None:
        admin = await superuser_connect(stack)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    run_sync(go())


def ca_file(settings: HomeSettings) -> Path:
    """The stack's CA certificate, which issued the registry's."""
    return TlsFiles.under(settings.home_dir / "tls").ca_cert


def trusting(ca: Path) -> ssl.SSLContext:
    """A client context that trusts `ca` only (and checks the host name)."""
    return ssl.create_default_context(cafile=ca)


class ServerThread:
    """The registry's server, as `fleetpulse registry` builds it, in a thread with its own
    event loop."""

    def __init__(self, settings: RegistrySettings, keyring: Keyring) -> None:
        self.settings = settings
        self.app = create_app(settings, keyring)
        self.server = build_server(settings, self.app, serving_certificate(settings))
        self.verify = trusting(ca_file(settings))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the registry did not start (see the log)")
            time.sleep(0.05)
        return self

    @property
    def port(self) -> int:
        port: int = self.server.servers[0].sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        return f"{self.settings.scheme}://localhost:{self.port}"

    def get(self, path: str, **kw: Any) -> httpx.Response:
        """GET `path`, verifying the server against the stack's CA."""
        return httpx.get(self.base_url + path, verify=self.verify, timeout=30, **kw)

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class RelayThread:
    """A relay from `port` to `target` on loopback, on an event loop in a thread of its own, so
    a test can cut it (every connection dropped, new ones refused) and restore it while the
    server's thread goes on."""

    def __init__(self, port: int, target: int, *, started: bool = True) -> None:
        self.relay = Relay(port, target)
        self.started = started
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def __enter__(self) -> RelayThread:
        self.thread.start()
        if self.started:
            self.restore()
        return self

    def cut(self) -> None:
        self._run(self.relay.cut())

    def restore(self) -> None:
        self._run(self.relay.restore())

    def __exit__(self, *exc: object) -> None:
        self._run(self.relay.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def wait_for_health(
    server: ServerThread, done: Callable[[httpx.Response], bool], timeout: float = 60
) -> httpx.Response:
    """GET /health until `done(response)` holds; the last response (the test asserts on it)."""
    deadline = time.monotonic() + timeout
    while True:
        r = server.get("/health")
        if done(r) or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


@dataclass
class Api:
    """An HTTPS client to the running registry, verifying it against the stack's CA, that keeps
    every response it saw."""

    base_url: str
    settings: RegistrySettings
    seen: list[str] = field(default_factory=list)

    @property
    def ca(self) -> Path:
        return ca_file(self.settings)

    @functools.cached_property
    def verify(self) -> ssl.SSLContext:
        return trusting(self.ca)

    def request(
        self, method: str, path: str, token: str | None = None, **kw: Any
    ) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        r = httpx.request(
            method, self.base_url + path, headers=headers, timeout=60, verify=self.verify, **kw
        )
        self.seen.append(f"{r.status_code} {dict(r.headers)} {r.text}")
        return r

    def login(self, email: str, password: str) -> str:
        r = self.request("POST", "/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        token: str = r.json()["access_token"]
        return token

    def sql(self, query: str, *args: object, as_owner: bool = False) -> list[asyncpg.Record]:
        """Run one statement on the registry's database (a connection of its own), as the
        registry's role or, for rows that role may only read (metrics), as the owner."""
        settings = self.settings
        if as_owner:
            settings = settings.model_copy(update={"pg_user": OWNER_ROLE})

        async def go() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(**settings.connect_kwargs())
            try:
                rows: list[asyncpg.Record] = await conn.fetch(query, *args)
                return rows
            finally:
                await conn.close()

        return run_sync(go())  # type: ignore[no-any-return]


@contextmanager
def refused(kind: type[Exception], message: str) -> Iterator[None]:
    """The block must raise `kind` with exactly `message`."""
    with pytest.raises(kind) as caught:
        yield
    assert str(caught.value) == message


def new_user(api: Api, admin_token: str, role: str = "user") -> tuple[dict[str, Any], str, str]:
    """A new user of `role`: (its public record, its password, a token)."""
    email = f"{unique(role)}@example.com"
    password = f"pw-{uuid.uuid4().hex}"
    r = api.request(
        "POST",
        "/users",
        admin_token,
        json={"email": email, "name": "Test", "password": password, "role": role},
    )
    assert r.status_code == 201, r.text
    return r.json(), password, api.login(email, password)


def add_snapshot(api: Api, server_id: str, at: datetime, cpu: float) -> None:
    """One 5 s row (5 samples; memory 40 %, disk 70 %, 100 B in, 50 B out) at `at`."""
    api.sql(
        'INSERT INTO metrics_snapshots (server_id, "timestamp", cpu_usage, memory_usage, '
        "disk_usage, cpu_usage_min, cpu_usage_max, memory_usage_min, memory_usage_max, "
        "disk_usage_min, disk_usage_max, sample_count, network_rx, network_tx, processes) "
        "VALUES ($1, $2, $3, 40, 70, $3, $3, 40, 40, 70, 70, 5, 100, 50, '[]')",
        server_id,
        at,
        cpu,
        as_owner=True,
    )


def server_with_rows(
    api: Api, admin_token: str, rows: list[tuple[int, float]], minutes: int, **server: Any
) -> tuple[str, str, dict[str, str]]:
    """A new server with 5 s rows at (seconds after a minute 10 minutes ago, cpu): its id, a
    plain user's token, and the query parameters of `minutes` minutes from that minute."""
    server_id: str = api.request(
        "POST", "/servers", admin_token, json=server_body(**server)
    ).json()["id"]
    minute = datetime.fromtimestamp(math.floor(time.time() / 60) * 60 - 600, UTC)
    for offset, cpu in rows:
        add_snapshot(api, server_id, minute + timedelta(seconds=offset), cpu)
    _, _, user_token = new_user(api, admin_token)
    params = {
        "from": minute.isoformat(),
        "to": (minute + timedelta(minutes=minutes)).isoformat(),
        "step": "1m",
    }
    return server_id, user_token, params
