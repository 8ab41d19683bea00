"""Settings come from FLEETPULSE_* variables, with local-stack defaults; secrets stay secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.settings import StackSettings
from runtime.settings import OWNER_ROLE, READER_ROLE, REGISTRY_ROLE, SINK_ROLE


def test_defaults_point_at_the_local_stack(clean_env: pytest.MonkeyPatch) -> None:
    s = StackSettings()
    assert s.kafka_bootstrap == "127.0.0.1:19092"
    assert (s.pg_host, s.pg_port, s.pg_database) == ("127.0.0.1", 55432, "fleetpulse")
    assert s.pg_sslmode == "verify-full"
    assert s.home_dir == Path(".fleetpulse").resolve()


def test_environment_overrides(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("FLEETPULSE_KAFKA_BOOTSTRAP", "kafka1:9092,kafka2:9092")
    clean_env.setenv("FLEETPULSE_PG_PORT", "6543")
    clean_env.setenv("FLEETPULSE_HOME", str(tmp_path))
    s = StackSettings()
    assert (s.kafka_host, s.kafka_port) == ("kafka1", 9092)
    assert s.pg_port == 6543
    assert s.password_path == tmp_path / "secrets" / "pg" / "fleetpulse"


def test_no_service_reads_the_owners_password_by_default(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only the stack, the migrations and the backups log in as the database's owner; every
    other model that connects defaults to a role and a password file of its own."""
    from infra.backup.settings import BackupSettings
    from registry.settings import RegistrySettings
    from runtime.settings import PostgresSettings
    from sinks.settings import SinkSettings

    clean_env.setenv("FLEETPULSE_HOME", str(tmp_path))
    owner = StackSettings()
    assert owner.pg_user == OWNER_ROLE == BackupSettings().pg_user
    assert owner.password_path == tmp_path / "secrets" / "pg" / OWNER_ROLE
    services: list[PostgresSettings] = [RegistrySettings(), SinkSettings(), PostgresSettings()]
    assert [s.pg_user for s in services] == [REGISTRY_ROLE, SINK_ROLE, READER_ROLE]
    for s in services:
        assert s.password_path != owner.password_path
        assert s.password_path.parent == owner.password_path.parent


def test_every_setting_is_documented_in_the_readme() -> None:
    from infra.backup.settings import BackupSettings
    from producers.settings import AgentSettings, SimulatorSettings
    from registry.settings import RegistrySettings
    from sinks.settings import SinkSettings
    from streams.settings import StreamSettings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    models = (
        StackSettings,
        BackupSettings,
        AgentSettings,
        SimulatorSettings,
        SinkSettings,
        StreamSettings,
        RegistrySettings,
    )
    for model in models:
        for name in model.model_fields:
            assert f"`FLEETPULSE_{name.upper()}`" in readme, name
