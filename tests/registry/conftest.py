"""The registry under test: a real uvicorn server (in a thread) on a migrated database of its
own, with a test keyring; clients talk HTTP to it like curl would. Every response body and
header and every log line of the session is kept, so a test can prove no secret leaked."""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from argon2 import PasswordHasher
from pydantic import SecretStr

from infra.db import migrate
from infra.settings import StackSettings
from registry.app import create_app
from registry.crypto import Keyring
from registry.security import Passwords
from registry.service import create_admin
from registry.settings import RegistrySettings
from tests.conftest import superuser_connect

#: The test keyring's keys; they must never show up in a response or a log line.
KEY_1 = bytes(range(32))
KEY_2 = bytes(range(100, 132))
TEST_KEYS = f"1:{base64.b64encode(KEY_1).decode()}"
ADMIN_EMAIL = "root@fleetpulse.test"
ADMIN_PASSWORD = "admin-password-Zq8"


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


@pytest.fixture(scope="session")
def log_recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    loggers = [logging.getLogger(name) for name in SERVER_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(recorder)
        lg.setLevel(logging.DEBUG)
    yield recorder
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(recorder)
        lg.setLevel(level)


def registry_settings(stack: StackSettings, database: str, **overrides: Any) -> RegistrySettings:
    values: dict[str, Any] = {
        "pg_database": database,
        "registry_keys": SecretStr(TEST_KEYS),
        "registry_port": 0,
        "registry_consume_status": False,
        "registry_key_file": stack.home_dir / "secrets" / f"no-such-key-file-{database}",
    }
    values.update(overrides)
    return RegistrySettings(**values)


def _run(coro: Any) -> Any:
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

    _run(go())
    return name


def drop_database(stack: StackSettings, name: str) -> None:
    async def go() -> None:
        admin = await superuser_connect(stack)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    _run(go())


@pytest.fixture(scope="session")
def registry_db(stack_settings: StackSettings) -> Iterator[str]:
    """A migrated database for the registry tests, dropped at the end of the session."""
    name = create_database(stack_settings)
    yield name
    drop_database(stack_settings, name)


@pytest.fixture
async def registry_conn(app_conn: asyncpg.Connection) -> asyncpg.Connection:
    """A connection to a database of the test's own, with the registry's tables."""
    await migrate(app_conn)
    return app_conn


@pytest.fixture(scope="session")
def passwords() -> Passwords:
    """Argon2id at its cheapest parameters: the tests check the rules, not the cost."""
    return Passwords(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture(scope="session")
def keyring() -> Keyring:
    return Keyring({1: KEY_1})


class ServerThread:
    """uvicorn serving the registry app in a thread with its own event loop."""

    def __init__(self, settings: RegistrySettings, keyring: Keyring) -> None:
        self.settings = settings
        self.app = create_app(settings, keyring)
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host=settings.registry_host,
                port=settings.registry_port,
                ssl_certfile=settings.registry_tls_cert,
                ssl_keyfile=settings.registry_tls_key,
                log_config=None,
                lifespan="on",
            )
        )
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

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@dataclass
class Api:
    """An HTTP client to the running registry that keeps every response it saw."""

    base_url: str
    settings: RegistrySettings
    seen: list[str] = field(default_factory=list)

    def request(
        self, method: str, path: str, token: str | None = None, **kw: Any
    ) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        r = httpx.request(method, self.base_url + path, headers=headers, timeout=60, **kw)
        self.seen.append(f"{r.status_code} {dict(r.headers)} {r.text}")
        return r

    def login(self, email: str, password: str) -> str:
        r = self.request("POST", "/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        token: str = r.json()["access_token"]
        return token

    def sql(self, query: str, *args: object) -> list[asyncpg.Record]:
        """Run one statement on the registry's database (a connection of its own)."""

        async def go() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(**self.settings.connect_kwargs())
            try:
                rows: list[asyncpg.Record] = await conn.fetch(query, *args)
                return rows
            finally:
                await conn.close()

        return _run(go())  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def registry_server(
    stack_settings: StackSettings, registry_db: str, log_recorder: Recorder
) -> Iterator[ServerThread]:
    settings = registry_settings(stack_settings, registry_db)
    _run(create_admin(settings, ADMIN_EMAIL, "Root", ADMIN_PASSWORD))
    keyring = Keyring({1: KEY_1})
    with ServerThread(settings, keyring) as server:
        yield server


@pytest.fixture(scope="session")
def api(registry_server: ServerThread) -> Api:
    return Api(registry_server.base_url, registry_server.settings)


@pytest.fixture(scope="session")
def admin_token(api: Api) -> str:
    return api.login(ADMIN_EMAIL, ADMIN_PASSWORD)


@contextmanager
def refused(kind: type[Exception], message: str) -> Iterator[None]:
    """The block must raise `kind` with exactly `message`."""
    with pytest.raises(kind) as caught:
        yield
    assert str(caught.value) == message


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


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


def server_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "web",
        "hostname": f"{unique('web')}.example.com",
        "ip_address": "10.0.0.7",
        "port": 22,
        "username": "deploy",
        "password": f"ssh-{uuid.uuid4().hex}",
    }
    body.update(overrides)
    return body


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
