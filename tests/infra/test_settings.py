"""Settings come from FLEETPULSE_* variables, with local-stack defaults; secrets stay secret."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from infra.settings import StackSettings
from infra.stack.tls import ensure_certificates

_OURS = (
    "FLEETPULSE_HOME",
    "FLEETPULSE_KAFKA_BOOTSTRAP",
    "FLEETPULSE_KAFKA_CONTROLLER_PORT",
    "FLEETPULSE_PG_PORT",
    "FLEETPULSE_PG_STORAGE",
    "FLEETPULSE_PG_SSLMODE",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _OURS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


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
    assert s.password_path == tmp_path / "secrets" / "pg_password"


def test_invalid_values_are_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FLEETPULSE_PG_PORT", "70000")
    with pytest.raises(ValueError, match="pg_port"):
        StackSettings()


def test_password_never_in_repr_or_description(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FLEETPULSE_PG_PASSWORD", "s3cret-value")
    clean_env.setenv("FLEETPULSE_PG_SSLMODE", "disable")
    s = StackSettings()
    assert "s3cret-value" not in repr(s) and "s3cret-value" not in s.describe()
    assert s.connect_kwargs()["password"] == "s3cret-value"


def test_password_file_is_read(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    clean_env.setenv("FLEETPULSE_PG_PASSWORD_FILE", str(tmp_path / "pw"))
    assert StackSettings().password() == "from-file"


def test_verify_full_needs_the_ca(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("FLEETPULSE_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"ca\.crt"):
        StackSettings().ssl_context()
    ensure_certificates(tmp_path / "tls")
    ctx = StackSettings().ssl_context()
    assert isinstance(ctx, ssl.SSLContext) and ctx.check_hostname


def test_every_setting_is_documented_in_the_readme() -> None:
    from producers.settings import AgentSettings, SimulatorSettings
    from registry.settings import RegistrySettings
    from sinks.settings import SinkSettings
    from streams.settings import StreamSettings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    models = (
        StackSettings,
        AgentSettings,
        SimulatorSettings,
        SinkSettings,
        StreamSettings,
        RegistrySettings,
    )
    for model in models:
        for name in model.model_fields:
            assert f"`FLEETPULSE_{name.upper()}`" in readme, name
