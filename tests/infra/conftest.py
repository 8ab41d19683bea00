"""Clusters of their own for the stack's and the backups' drills: each an initdb'd PostgreSQL 15
with its own home, port and pgBackRest repository (a drill kills and deletes one without
touching the shared test stack)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.backup.base import stop_restored
from infra.backup.settings import BackupSettings
from infra.stack import PostgresCluster
from infra.stack.pgbackrest import PgBackRest
from infra.stack.process import free_port
from tests.factories import ScratchCluster


@pytest.fixture
def scratch_cluster(tmp_path: Path) -> Iterator[ScratchCluster]:
    """Start a cluster of its own (settings overridable); every one, and every cluster
    restored under the test's folder, is stopped at the end."""
    started: list[BackupSettings] = []

    def start(**overrides: Any) -> BackupSettings:
        home = tmp_path / f"home{len(started)}"
        settings = BackupSettings(
            **{"home": home, "pg_port": free_port(), "wal_archive_timeout": 300, **overrides}
        )
        cluster = PostgresCluster(settings)
        cluster.start()
        started.append(settings)
        PgBackRest(settings, cluster).ensure()
        return settings

    yield start
    for settings in started:
        PostgresCluster(settings).stop()
    for pid_file in tmp_path.glob("*/postmaster.pid"):
        stop_restored(pid_file.parent)
