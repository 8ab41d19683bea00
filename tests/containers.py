"""Opt-in: Kafka and TimescaleDB from testcontainers instead of the local stack.

Set FLEETPULSE_TEST_DOCKER=1 where a Docker engine is reachable. The service fixtures
(`kafka_bootstrap`, `fresh_database`, `app_conn`) then use a Kafka container (KRaft) and a
TimescaleDB container; tests of the local stack itself (start/stop, TLS, WAL archiving) still
run against the local stack. With the variable set and no Docker engine, the session fails
with the reason: it never falls back silently and never skips.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

KAFKA_IMAGE = "confluentinc/cp-kafka:8.0.0"  # Apache Kafka 4.0
TIMESCALEDB_IMAGE = "timescale/timescaledb:2.23.0-pg15"


def docker_requested() -> bool:
    return os.environ.get("FLEETPULSE_TEST_DOCKER", "") == "1"


@contextmanager
def container_services() -> Iterator[dict[str, str]]:
    """Start both containers; yield the FLEETPULSE_* variables that point at them."""
    import docker
    from testcontainers.community.kafka import KafkaContainer
    from testcontainers.community.postgres import PostgresContainer

    try:
        docker.from_env().ping()
    except Exception as exc:
        raise RuntimeError(
            f"FLEETPULSE_TEST_DOCKER=1 but no Docker engine is reachable ({type(exc).__name__}); "
            "unset it to test against the local stack"
        ) from None
    password = secrets.token_urlsafe(16)
    with (
        KafkaContainer(KAFKA_IMAGE).with_kraft() as kafka,
        PostgresContainer(
            TIMESCALEDB_IMAGE, username="fleetpulse", password=password, dbname="fleetpulse"
        ) as pg,
    ):
        yield {
            "FLEETPULSE_KAFKA_BOOTSTRAP": kafka.get_bootstrap_server(),
            "FLEETPULSE_PG_HOST": pg.get_container_host_ip(),
            "FLEETPULSE_PG_PORT": str(pg.get_exposed_port(5432)),
            # The container has only its owner role, no role per service (the local stack's
            # `stack up` makes those): every service logs in as the owner here.
            "FLEETPULSE_PG_USER": "fleetpulse",
            "FLEETPULSE_PG_PASSWORD": password,
            "FLEETPULSE_PG_SSLMODE": "disable",
        }
