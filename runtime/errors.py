"""One error root, and for each external system the one place that says whether a failure is
worth retrying.

`FleetPulseError` is the base of every expected failure: the command line prints it as one
line (exit status 1, no traceback), and its message never holds a secret. Services raise its
subclasses; nothing re-wraps them on the way out.

The transient/permanent decision is made here once per system:
- PostgreSQL, by SQLSTATE class (the first two characters): connection trouble, resource
  exhaustion, an operator intervention (shutdown, restart) and serialization conflicts are
  transient — retry later. Data, integrity and syntax errors are permanent for the row that
  caused them — isolate it and dead-letter it; the rest of the batch lands.
- Kafka, by aiokafka's own `retriable` flag on its errors: a broker away, a leader moving, a
  timeout are transient; an authorization failure or a record too large are not.
- HTTP, by status: 408, 425, 429 and 5xx are transient; other 4xx are the request's fault.
A lost connection or a timeout, in any of them, is transient: the dependency, not the data.
"""

from __future__ import annotations

from enum import Enum

import asyncpg
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, NodeNotReadyError


class FleetPulseError(Exception):
    """Base of FleetPulse's expected failures; the message is one line without secrets."""


class DependencyUnavailable(FleetPulseError):
    """A service the caller needs (Kafka, PostgreSQL, an HTTP endpoint) cannot be reached."""


class Disposition(Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


#: SQLSTATE classes that mean "try again later".
_PG_TRANSIENT_CLASSES = frozenset(
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

#: Exceptions that mean "the connection, not the request": transient for every system.
_CONNECTION_ERRORS = (OSError, TimeoutError, ConnectionError)

#: HTTP statuses worth retrying: timeout, too early, too many requests, and server errors.
_HTTP_TRANSIENT = frozenset({408, 425, 429})

#: What a retry loop around PostgreSQL catches (then `postgres_disposition` decides).
POSTGRES_ERRORS: tuple[type[BaseException], ...] = (
    *_CONNECTION_ERRORS,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
#: What a retry loop around Kafka catches (then `kafka_disposition` decides).
KAFKA_ERRORS: tuple[type[BaseException], ...] = (*_CONNECTION_ERRORS, KafkaError)


def postgres_disposition(exc: BaseException) -> Disposition:
    """TRANSIENT for anything that is not a PostgreSQL data/integrity verdict on the rows."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if sqlstate[:2] in _PG_TRANSIENT_CLASSES:
            return Disposition.TRANSIENT
        return Disposition.PERMANENT
    # Lost connections, timeouts, interface errors: the database, not the data.
    return Disposition.TRANSIENT


def kafka_disposition(exc: BaseException) -> Disposition:
    """TRANSIENT when aiokafka marks the error retriable, or the connection failed."""
    if isinstance(exc, KafkaTimeoutError):  # not flagged retriable, but a broker away
        return Disposition.TRANSIENT
    if isinstance(exc, KafkaError):
        # Connection-level errors (KafkaConnectionError, NodeNotReady, ...) are retriable.
        return Disposition.TRANSIENT if exc.retriable else Disposition.PERMANENT
    return Disposition.TRANSIENT


def http_disposition(status: int | None) -> Disposition:
    """For an HTTP response status; `None` means no response at all (connection failed)."""
    if status is None or status >= 500 or status in _HTTP_TRANSIENT:
        return Disposition.TRANSIENT
    return Disposition.PERMANENT


#: SQLSTATEs that mean the server is away or coming back (a probe can tell when it is back).
_PG_AWAY = frozenset({"57P01", "57P02", "57P03"})  # admin/crash shutdown, cannot connect now


def is_connection_failure(exc: BaseException) -> bool:
    """Whether `exc` says the dependency could not be reached at all (refused, lost, timed
    out, shutting down), as opposed to answering with a transient refusal (disk full, a
    serialization conflict): only then is a TCP probe a sign that a retry may succeed."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return sqlstate[:2] == "08" or sqlstate in _PG_AWAY
    if isinstance(exc, KafkaError):
        return isinstance(exc, KafkaConnectionError | NodeNotReadyError | KafkaTimeoutError)
    return isinstance(exc, (*_CONNECTION_ERRORS, asyncpg.InterfaceError, DependencyUnavailable))


def describe(exc: BaseException) -> str:
    """One line for logs and dead letters: the error's type and message, with PostgreSQL's
    SQLSTATE when there is one."""
    sqlstate = getattr(exc, "sqlstate", None)
    name = f"{type(exc).__name__} [{sqlstate}]" if sqlstate else type(exc).__name__
    text = str(exc)
    return f"{name}: {text}" if text else name
