"""One error root, and the rules that say whether a failure is worth retrying. PostgreSQL's
and Kafka's own rules live beside their clients (`runtime/postgres.py`, `runtime/kafka.py`,
so a service loads only the client libraries it uses); HTTP's are here.

`FleetPulseError` is the base of every expected failure: the command line prints it as one
line (exit status 1, no traceback), and its message never holds a secret. Services raise its
subclasses; nothing re-wraps them on the way out.

The transient/permanent decision is made once per system:
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


class FleetPulseError(Exception):
    """Base of FleetPulse's expected failures; the message is one line without secrets."""


class DependencyUnavailable(FleetPulseError):
    """A service the caller needs (Kafka, PostgreSQL, an HTTP endpoint) cannot be reached."""


class Disposition(Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


#: Exceptions that mean "the connection, not the request": transient for every system.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, ConnectionError)

#: HTTP statuses worth retrying: timeout, too early, too many requests, and server errors.
_HTTP_TRANSIENT = frozenset({408, 425, 429})


def http_disposition(status: int | None) -> Disposition:
    """For an HTTP response status; `None` means no response at all (connection failed)."""
    if status is None or status >= 500 or status in _HTTP_TRANSIENT:
        return Disposition.TRANSIENT
    return Disposition.PERMANENT


def is_connection_failure(exc: BaseException) -> bool:
    """Whether `exc` says a dependency could not be reached at all (refused, lost, timed out):
    the part of each client's `is_away` that every system shares."""
    return isinstance(exc, (*CONNECTION_ERRORS, DependencyUnavailable))


def describe(exc: BaseException) -> str:
    """One line for logs and dead letters: the error's type and message, with PostgreSQL's
    SQLSTATE when there is one."""
    sqlstate = getattr(exc, "sqlstate", None)
    name = f"{type(exc).__name__} [{sqlstate}]" if sqlstate else type(exc).__name__
    text = str(exc)
    return f"{name}: {text}" if text else name
