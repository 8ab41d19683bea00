"""The local stack: a real Kafka broker and a PostgreSQL 15 cluster (WAL archived by
pgBackRest) under `<home>/`."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager

from infra.settings import StackSettings
from infra.stack.kafka import KafkaBroker
from infra.stack.kafka_security import KafkaSecurity
from infra.stack.pgbackrest import PgBackRest
from infra.stack.postgres import PostgresCluster
from infra.stack.process import ComponentStatus, StackError

__all__ = [
    "ComponentStatus",
    "KafkaBroker",
    "PostgresCluster",
    "StackError",
    "down",
    "status",
    "up",
]


@contextmanager
def _stack_lock(settings: StackSettings) -> Iterator[None]:
    """One `stack up`/`down` at a time, so two callers never start two brokers."""
    home = settings.home_dir
    home.mkdir(parents=True, exist_ok=True)
    with (home / "stack.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def up(settings: StackSettings) -> list[tuple[ComponentStatus, bool]]:
    """Start what is not running and wait until both are healthy.

    Returns each component's status and whether this call started it.
    """
    with _stack_lock(settings):
        started = []
        for component in (PostgresCluster(settings), KafkaBroker(settings)):
            was_started = component.start()
            if isinstance(component, PostgresCluster):
                pgbackrest = PgBackRest(settings, component)
                if was_started or not pgbackrest.stanza_exists():
                    pgbackrest.ensure()
            if isinstance(component, KafkaBroker):
                KafkaSecurity(settings, component).ensure()
            started.append((component.status(), was_started))
        return started


def down(settings: StackSettings) -> list[tuple[str, bool]]:
    """Stop both by PID. Returns each component's name and whether it was running."""
    with _stack_lock(settings):
        return [
            ("kafka", KafkaBroker(settings).stop()),
            ("postgres", PostgresCluster(settings).stop()),
        ]


def status(settings: StackSettings) -> list[ComponentStatus]:
    return [PostgresCluster(settings).status(), KafkaBroker(settings).status()]
