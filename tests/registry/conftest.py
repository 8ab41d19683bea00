"""The registry under test: a real uvicorn server (in a thread) on a migrated database of its
own, with a test keyring; clients talk HTTP to it like curl would. Every response body and
header and every log line of the session is kept, so a test can prove no secret leaked."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import asyncpg
import pytest
from argon2 import PasswordHasher

from infra.db import migrate
from infra.settings import StackSettings
from registry.crypto import Keyring
from registry.security import Passwords
from registry.service import create_admin
from tests.factories import ADMIN_EMAIL, ADMIN_PASSWORD, KEY_1, registry_settings
from tests.registry.harness import (
    SERVER_LOGGERS,
    Api,
    Recorder,
    ServerThread,
    create_database,
    drop_database,
    run_sync,
)


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


@pytest.fixture(scope="session")
def registry_server(
    stack_settings: StackSettings, registry_db: str, log_recorder: Recorder
) -> Iterator[ServerThread]:
    settings = registry_settings(stack_settings, registry_db)
    run_sync(create_admin(settings, ADMIN_EMAIL, "Root", ADMIN_PASSWORD))
    keyring = Keyring({1: KEY_1})
    with ServerThread(settings, keyring) as server:
        yield server


@pytest.fixture(scope="session")
def api(registry_server: ServerThread) -> Api:
    return Api(registry_server.base_url, registry_server.settings)


@pytest.fixture(scope="session")
def admin_token(api: Api) -> str:
    return api.login(ADMIN_EMAIL, ADMIN_PASSWORD)
