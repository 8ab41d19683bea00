"""Unit tests: transient vs permanent PostgreSQL errors, by SQLSTATE class."""

from __future__ import annotations

import asyncpg
import pytest

from sinks.errors import Disposition, classify, describe


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (asyncpg.ForeignKeyViolationError("fk"), Disposition.PERMANENT),  # 23503
        (asyncpg.CheckViolationError("no partition"), Disposition.PERMANENT),  # 23514
        (asyncpg.NumericValueOutOfRangeError("big"), Disposition.PERMANENT),  # 22003
        (asyncpg.UndefinedTableError("gone"), Disposition.PERMANENT),  # 42P01
        (asyncpg.AdminShutdownError("restart"), Disposition.TRANSIENT),  # 57P01
        (asyncpg.CannotConnectNowError("starting"), Disposition.TRANSIENT),  # 57P03
        (asyncpg.SerializationError("retry"), Disposition.TRANSIENT),  # 40001
        (asyncpg.DeadlockDetectedError("retry"), Disposition.TRANSIENT),  # 40P01
        (asyncpg.TooManyConnectionsError("busy"), Disposition.TRANSIENT),  # 53300
        (asyncpg.DiskFullError("full"), Disposition.TRANSIENT),  # 53100
        (asyncpg.ConnectionDoesNotExistError("lost"), Disposition.TRANSIENT),
        (ConnectionRefusedError(111, "refused"), Disposition.TRANSIENT),
        (TimeoutError(), Disposition.TRANSIENT),
    ],
)
def test_classify(exc: BaseException, expected: Disposition) -> None:
    assert classify(exc) is expected


def test_describe_names_the_sqlstate() -> None:
    assert describe(asyncpg.ForeignKeyViolationError("bad row")) == (
        "ForeignKeyViolationError [23503]: bad row"
    )
