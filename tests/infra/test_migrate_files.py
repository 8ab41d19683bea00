"""Unit tests of the migration files and loader (no database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.db import MigrationError, load_migrations


def test_both_modes_have_every_version_in_order() -> None:
    pg = load_migrations("postgres")
    ts = load_migrations("timescaledb")
    assert [m.version for m in pg] == [m.version for m in ts] == sorted({m.version for m in pg})
    assert [m.version for m in pg][:3] == [1, 2, 3]
    assert {m.variant for m in pg} == {"all", "postgres"}
    assert {m.variant for m in ts} == {"all", "timescaledb"}


def test_timescaledb_variant_installs_hypertables_and_policies() -> None:
    sql = "\n".join(m.sql for m in load_migrations("timescaledb"))
    assert "create_hypertable('metrics_snapshots'" in sql
    assert "INTERVAL '1 day'" in sql
    assert "add_compression_policy('metrics_snapshots', INTERVAL '7 days'" in sql
    assert "add_retention_policy('metrics_snapshots', INTERVAL '30 days'" in sql


def _write(d: Path, name: str, sql: str = "SELECT 1;") -> None:
    (d / name).write_text(sql)


def test_missing_mode_variant_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "0001_a.sql")
    _write(tmp_path, "0002_b.postgres.sql")
    with pytest.raises(MigrationError, match=r"0002 needs both"):
        load_migrations("postgres", tmp_path)


def test_common_and_mode_file_for_one_version_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "0001_a.sql")
    _write(tmp_path, "0001_a.postgres.sql")
    _write(tmp_path, "0001_a.timescaledb.sql")
    with pytest.raises(MigrationError, match="both a common and a per-mode"):
        load_migrations("postgres", tmp_path)


def test_bad_file_name_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "1_a.sql")
    with pytest.raises(MigrationError, match="not a migration name"):
        load_migrations("postgres", tmp_path)
