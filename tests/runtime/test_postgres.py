"""Integration: PostgreSQL connections from the settings, against the real local cluster: an
outage and a refusal are told apart, a retrying connect waits an outage out."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest
from pydantic import SecretStr

from infra.settings import StackSettings
from infra.stack.process import free_port
from runtime import postgres
from runtime.backoff import Backoff
from runtime.errors import Disposition
from runtime.logs import Outage

pytestmark = pytest.mark.integration


async def test_connects_over_verify_full_tls(stack_settings: StackSettings) -> None:
    conn = await postgres.connect(stack_settings)
    try:
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await conn.close()
    assert await postgres.probe(stack_settings)()


async def test_nothing_listening_is_unavailable_and_names_no_secret(
    stack_settings: StackSettings,
) -> None:
    away = stack_settings.model_copy(
        update={"pg_port": free_port(), "pg_password": SecretStr("p4ss-w0rd-x")}
    )
    with pytest.raises(postgres.DatabaseUnavailable, match="cannot connect to postgresql://") as e:
        await postgres.connect(away)
    assert "p4ss-w0rd-x" not in str(e.value)
    assert not await postgres.probe(away)()


async def test_a_wrong_password_is_refused_not_retried(stack_settings: StackSettings) -> None:
    wrong = stack_settings.model_copy(update={"pg_password": SecretStr("not-the-password")})
    with pytest.raises(postgres.DatabaseRefused, match="refused the connection") as e:
        await postgres.connect(wrong)
    assert "not-the-password" not in str(e.value)
    outage = Outage("postgres", logging.getLogger("t"))
    with pytest.raises(postgres.DatabaseRefused):
        await postgres.connect_retrying(wrong, Backoff(0.05, 0.1), outage)


async def test_connect_retrying_waits_until_stopped(
    stack_settings: StackSettings, caplog: pytest.LogCaptureFixture
) -> None:
    away = stack_settings.model_copy(update={"pg_port": free_port()})
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(1.0, stop.set)
    outage = Outage("postgres", logging.getLogger("t.pg"))
    with caplog.at_level(logging.WARNING, logger="t.pg"):
        conn = await postgres.connect_retrying(
            away, Backoff(0.05, 0.1, probe_every=0.05), outage, stop
        )
    assert conn is None
    assert not outage.up and outage.failures > 3
    assert len(caplog.records) == 1  # one line for the outage, not one per attempt


async def test_connect_retrying_returns_a_connection_and_reports_back(
    stack_settings: StackSettings,
) -> None:
    outage = Outage("postgres", logging.getLogger("t"))
    outage.failed("earlier")
    conn = await postgres.connect_retrying(stack_settings, Backoff(0.05, 0.1), outage)
    assert conn is not None
    await conn.close()
    assert outage.up


def test_a_connection_left_mid_protocol_by_a_dead_server_is_retried() -> None:
    """What asyncpg raises on a connection whose server was killed mid-query is caught by
    the retry loops and counts as the database being away, not as a verdict on the rows."""
    exc = asyncpg.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress"
    )
    assert isinstance(exc, postgres.POSTGRES_ERRORS)
    assert postgres.disposition(exc) is Disposition.TRANSIENT
    assert postgres.is_away(exc)
