"""Transient or permanent: what a PostgreSQL error means for the sink, decided in one place.

By SQLSTATE class (the first two characters): connection trouble, resource exhaustion, an
operator intervention (shutdown, restart) and serialization conflicts are transient — retry the
batch later. Data, integrity and syntax errors are permanent for the row that caused them —
isolate it and dead-letter it; the rest of the batch lands.
"""

from __future__ import annotations

from enum import Enum

import asyncpg


class Disposition(Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


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


def classify(exc: BaseException) -> Disposition:
    """TRANSIENT for anything that is not a PostgreSQL data/integrity verdict on the rows."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return (
            Disposition.TRANSIENT if sqlstate[:2] in _TRANSIENT_CLASSES else Disposition.PERMANENT
        )
    # Lost connections, timeouts, interface errors: the database, not the data.
    return Disposition.TRANSIENT


def describe(exc: BaseException) -> str:
    """One line for logs and dead letters (the message PostgreSQL gave, with its SQLSTATE)."""
    sqlstate = getattr(exc, "sqlstate", None)
    return (
        f"{type(exc).__name__} [{sqlstate}]: {exc}" if sqlstate else f"{type(exc).__name__}: {exc}"
    )
