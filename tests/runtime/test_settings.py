"""Unit tests of the settings bases: secrets stay secret, files are read on use, validators
refuse nonsense with the setting's name."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from infra.stack.tls import ensure_certificates
from runtime.settings import READER_ROLE, KafkaSettings, PostgresSettings, ServiceSettings


def test_invalid_values_are_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FLEETPULSE_PG_PORT", "70000")
    with pytest.raises(ValueError, match="pg_port"):
        PostgresSettings()


def test_password_never_in_repr_or_description(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FLEETPULSE_PG_PASSWORD", "s3cret-value")
    clean_env.setenv("FLEETPULSE_PG_SSLMODE", "disable")
    s = PostgresSettings()
    assert "s3cret-value" not in repr(s) and "s3cret-value" not in s.describe()
    assert s.connect_kwargs()["password"] == "s3cret-value"


def test_password_file_is_read(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    clean_env.setenv("FLEETPULSE_PG_PASSWORD_FILE", str(tmp_path / "pw"))
    assert PostgresSettings().password() == "from-file"


def test_the_password_file_is_the_roles_own(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("FLEETPULSE_HOME", str(tmp_path))
    # A model that does not choose a role gets the read-only one.
    assert PostgresSettings().pg_user == READER_ROLE
    assert PostgresSettings().password_path == tmp_path / "secrets" / "pg" / READER_ROLE
    clean_env.setenv("FLEETPULSE_PG_USER", "someone")
    assert PostgresSettings().password_path == tmp_path / "secrets" / "pg" / "someone"


def test_the_password_file_is_read_at_each_connection(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """asyncpg calls a callable password at every new connection: a rotated file is used by
    a pool's next connection without a restart."""
    clean_env.setenv("FLEETPULSE_HOME", str(tmp_path))
    clean_env.setenv("FLEETPULSE_PG_SSLMODE", "disable")
    clean_env.setenv("FLEETPULSE_PG_USER", "dashboard")
    s = PostgresSettings()
    password = s.connect_kwargs()["password"]
    assert callable(password)
    with pytest.raises(FileNotFoundError, match=r"'dashboard'.*secrets/pg/dashboard") as missing:
        password()
    s.password_path.parent.mkdir(parents=True)
    s.password_path.write_text("first\n")
    assert password() == "first"
    s.password_path.write_text("second\n")
    assert password() == "second"
    assert "second" not in str(missing.value)


def test_verify_full_needs_the_ca(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("FLEETPULSE_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"ca\.crt"):
        PostgresSettings().ssl_context()
    ensure_certificates(tmp_path / "tls")
    ctx = PostgresSettings().ssl_context()
    assert isinstance(ctx, ssl.SSLContext) and ctx.check_hostname


def test_retry_bounds_are_checked(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FLEETPULSE_RETRY_MIN", "5")
    clean_env.setenv("FLEETPULSE_RETRY_MAX", "1")
    with pytest.raises(ValueError, match="retry_max must be at least retry_min"):
        ServiceSettings()


def test_kafka_tuning_comes_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FLEETPULSE_COMPRESSION", "zstd")
    clean_env.setenv("FLEETPULSE_LINGER_MS", "20")
    clean_env.setenv("FLEETPULSE_KAFKA_FETCH_MAX_BYTES", "1048576")
    s = KafkaSettings()
    assert (s.compression, s.linger_ms, s.kafka_fetch_max_bytes) == ("zstd", 20, 1_048_576)
    clean_env.setenv("FLEETPULSE_COMPRESSION", "brotli")
    with pytest.raises(ValueError, match="compression"):
        KafkaSettings()
