"""PostgreSQL connections as every FleetPulse service opens them: from the settings (TLS mode,
password file, timeout), with one error when the database cannot be reached, and a retrying
connect for services that wait out an outage."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from runtime.backoff import Backoff, Probe, tcp_probe
from runtime.errors import POSTGRES_ERRORS, DependencyUnavailable, Disposition, FleetPulseError
from runtime.errors import postgres_disposition as disposition
from runtime.logs import Outage
from runtime.settings import PostgresSettings


class DatabaseUnavailable(DependencyUnavailable):
    """No connection to the database; the message says where and why (never the password)."""


class DatabaseRefused(FleetPulseError):
    """The database answered and refused (bad password, unknown database or role): retrying
    will not help."""


async def connect(settings: PostgresSettings, database: str | None = None) -> asyncpg.Connection:
    """A connection as the application role, with the configured TLS mode."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(**settings.connect_kwargs(database))
    except POSTGRES_ERRORS as exc:
        if disposition(exc) is Disposition.PERMANENT:
            raise DatabaseRefused(f"{settings.describe()} refused the connection: {exc}") from None
        raise DatabaseUnavailable(
            f"cannot connect to {settings.describe()}: {exc} "
            "(is the stack up? `fleetpulse stack up`)"
        ) from None
    return conn


async def create_pool(settings: PostgresSettings, **options: Any) -> asyncpg.Pool:
    """A connection pool with the same connection settings as `connect`."""
    pool: asyncpg.Pool = await asyncpg.create_pool(**settings.connect_kwargs(), **options)
    return pool


def probe(settings: PostgresSettings) -> Probe:
    """A cheap readiness check: the server accepts TCP connections (PostgreSQL does not log a
    connection that sends nothing)."""
    return tcp_probe([(settings.pg_host, settings.pg_port)])


async def connect_retrying(
    settings: PostgresSettings,
    backoff: Backoff,
    outage: Outage,
    stop: asyncio.Event | None = None,
) -> asyncpg.Connection | None:
    """Connect, waiting out an outage with `backoff` (and its probe); None if `stop` is set
    first. A permanent refusal (bad password, unknown database) raises."""
    check = probe(settings)
    while stop is None or not stop.is_set():
        try:
            conn = await connect(settings)
        except DatabaseUnavailable as exc:
            outage.failed(str(exc))
            await backoff.wait(check, stop)
            continue
        outage.ok()
        backoff.reset()
        return conn
    return None
