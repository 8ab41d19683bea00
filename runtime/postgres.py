"""PostgreSQL connections as every FleetPulse service opens them: from the settings (TLS mode,
password file, timeout), with one error when the database cannot be reached, a retrying
connect for services that wait out an outage, and the one place that decides whether a
PostgreSQL error is worth retrying.

By SQLSTATE class (the first two characters): connection trouble, resource exhaustion, an
operator intervention (shutdown, restart) and serialization conflicts are transient — retry the
batch later. Data, integrity and syntax errors are permanent for the row that caused them —
isolate it and dead-letter it; the rest of the batch lands. A lost connection or a timeout is
transient: the database, not the data.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from runtime.backoff import Backoff, Probe, tcp_probe
from runtime.errors import (
    CONNECTION_ERRORS,
    DependencyUnavailable,
    Disposition,
    FleetPulseError,
    is_connection_failure,
)
from runtime.logs import Outage
from runtime.settings import PostgresSettings

#: SQLSTATE classes that mean "try again later".
_TRANSIENT_CLASSES = frozenset(
    {
        "08",  # connection exception
        "40",  # transaction rollback (serialization failure, deadlock)
        "53",  # insufficient resources (disk full, out of memory, too many connections)
        "55",  # object not in prerequisite state (lock not available)
        "57",  # operator intervention (admin shutdown, crash shutdown, cannot connect now)
        "58",  # system error (I/O error)
        "XX",  # internal error
    }
)

#: SQLSTATEs that mean the server is away or coming back (a probe can tell when it is back).
_AWAY = frozenset({"57P01", "57P02", "57P03"})  # admin/crash shutdown, cannot connect now

#: What a retry loop around PostgreSQL catches (then `disposition` decides).
POSTGRES_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # A connection whose server died mid-query can be left half-way through its protocol
    # ("cannot switch to state 15; another operation is in progress"): drop it, reconnect.
    asyncpg.InternalClientError,
)


def disposition(exc: BaseException) -> Disposition:
    """TRANSIENT for anything that is not a PostgreSQL data/integrity verdict on the rows."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if sqlstate[:2] in _TRANSIENT_CLASSES:
            return Disposition.TRANSIENT
        return Disposition.PERMANENT
    return Disposition.TRANSIENT


def is_away(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached at all (refused, lost, shutting
    down), as opposed to a transient refusal from a running one (disk full, a serialization
    conflict): only then is a TCP probe a sign that a retry may succeed."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return sqlstate[:2] == "08" or sqlstate in _AWAY
    broken = (asyncpg.InterfaceError, asyncpg.InternalClientError)
    return is_connection_failure(exc) or isinstance(exc, broken)


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
