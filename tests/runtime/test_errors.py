"""Unit tests: transient vs permanent, decided once per external system."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka import errors as kafka

from runtime.errors import (
    Disposition,
    describe,
    http_disposition,
    is_connection_failure,
    kafka_disposition,
    postgres_disposition,
)

T, P = Disposition.TRANSIENT, Disposition.PERMANENT


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (asyncpg.ForeignKeyViolationError("fk"), P),  # 23503
        (asyncpg.CheckViolationError("no partition"), P),  # 23514
        (asyncpg.NumericValueOutOfRangeError("big"), P),  # 22003
        (asyncpg.UndefinedTableError("gone"), P),  # 42P01
        (asyncpg.AdminShutdownError("restart"), T),  # 57P01
        (asyncpg.CannotConnectNowError("starting"), T),  # 57P03
        (asyncpg.SerializationError("retry"), T),  # 40001
        (asyncpg.DeadlockDetectedError("retry"), T),  # 40P01
        (asyncpg.TooManyConnectionsError("busy"), T),  # 53300
        (asyncpg.DiskFullError("full"), T),  # 53100
        (asyncpg.ConnectionDoesNotExistError("lost"), T),
        (ConnectionRefusedError(111, "refused"), T),
        (TimeoutError(), T),
    ],
)
def test_postgres(exc: BaseException, expected: Disposition) -> None:
    assert postgres_disposition(exc) is expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (kafka.KafkaConnectionError("refused"), T),
        (kafka.NodeNotReadyError("starting"), T),
        (kafka.NotLeaderForPartitionError(), T),
        (kafka.RequestTimedOutError(), T),
        (kafka.KafkaTimeoutError(), T),
        (ConnectionResetError(), T),
        (kafka.TopicAuthorizationFailedError(), P),
        (kafka.MessageSizeTooLargeError(), P),
    ],
)
def test_kafka(exc: BaseException, expected: Disposition) -> None:
    assert kafka_disposition(exc) is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [(None, T), (500, T), (503, T), (429, T), (408, T), (400, P), (401, P), (404, P), (200, P)],
)
def test_http(status: int | None, expected: Disposition) -> None:
    assert http_disposition(status) is expected


def test_describe_names_the_sqlstate() -> None:
    assert describe(asyncpg.ForeignKeyViolationError("bad row")) == (
        "ForeignKeyViolationError [23503]: bad row"
    )
    assert describe(TimeoutError()) == "TimeoutError"


@pytest.mark.parametrize(
    ("exc", "away"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),
        (asyncpg.ConnectionDoesNotExistError("lost"), True),  # 08003
        (asyncpg.CannotConnectNowError("starting"), True),  # 57P03
        (asyncpg.AdminShutdownError("restart"), True),  # 57P01
        (kafka.KafkaConnectionError("refused"), True),
        (kafka.NodeNotReadyError("starting"), True),
        (asyncpg.DiskFullError("full"), False),  # the server answers: wait the full delay
        (asyncpg.SerializationError("retry"), False),
        (asyncpg.TooManyConnectionsError("busy"), False),
        (kafka.NotLeaderForPartitionError(), False),
    ],
)
def test_connection_failures_are_told_from_refusals(exc: BaseException, away: bool) -> None:
    assert is_connection_failure(exc) is away
