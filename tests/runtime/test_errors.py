"""Unit tests: transient vs permanent, decided once per external system (PostgreSQL in
`runtime/postgres.py`, Kafka in `runtime/kafka.py`, HTTP in `runtime/errors.py`), and whether
a failure means the dependency is away (then a probe can tell when it is back)."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka import errors as kafka_errors

from runtime import kafka, postgres
from runtime.errors import Disposition, describe, http_disposition

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
    assert postgres.disposition(exc) is expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (kafka_errors.KafkaConnectionError("refused"), T),
        (kafka_errors.NodeNotReadyError("starting"), T),
        (kafka_errors.NotLeaderForPartitionError(), T),
        (kafka_errors.RequestTimedOutError(), T),
        (kafka_errors.KafkaTimeoutError(), T),
        (ConnectionResetError(), T),
        (kafka_errors.TopicAuthorizationFailedError(), P),
        (kafka_errors.MessageSizeTooLargeError(), P),
    ],
)
def test_kafka(exc: BaseException, expected: Disposition) -> None:
    assert kafka.disposition(exc) is expected


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
        (postgres.DatabaseUnavailable("cannot connect"), True),
        (asyncpg.DiskFullError("full"), False),  # the server answers: wait the full delay
        (asyncpg.SerializationError("retry"), False),
        (asyncpg.TooManyConnectionsError("busy"), False),
    ],
)
def test_postgres_away_or_refusing(exc: BaseException, away: bool) -> None:
    assert postgres.is_away(exc) is away


@pytest.mark.parametrize(
    ("exc", "away"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (kafka_errors.KafkaConnectionError("refused"), True),
        (kafka_errors.NodeNotReadyError("starting"), True),
        (kafka_errors.KafkaTimeoutError(), True),
        (kafka_errors.NotLeaderForPartitionError(), False),
        (kafka_errors.TopicAuthorizationFailedError(), False),
    ],
)
def test_kafka_away_or_answering(exc: BaseException, away: bool) -> None:
    assert kafka.is_away(exc) is away
