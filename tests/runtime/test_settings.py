"""Unit tests of the settings bases: secrets stay secret, files are read on use, validators
refuse nonsense with the setting's name."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from infra.stack.tls import ensure_certificates
from runtime.settings import (
    READER_ROLE,
    KafkaSettings,
    PasswordFile,
    PostgresSettings,
    ServiceSettings,
)


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


def test_kafka_security_defaults_to_tls_and_the_users_password_file(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("FLEETPULSE_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"ca\.crt"):
        KafkaSettings().kafka_security()
    ensure_certificates(tmp_path / "tls")
    options = KafkaSettings(kafka_sasl_username="producer").kafka_security()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "producer"
    ctx = options["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.check_hostname
    password = options["sasl_plain_password"]
    assert isinstance(password, PasswordFile)
    assert password.path == tmp_path / "secrets" / "kafka" / "producer"


def test_a_password_file_is_read_at_each_use_and_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "producer"
    password = PasswordFile(path)
    with pytest.raises(FileNotFoundError, match="FLEETPULSE_KAFKA_SASL_PASSWORD_FILE"):
        password.encode()
    path.write_text("first\n")
    assert password.encode("utf-8") == b"first"
    path.write_text("second")  # a rotation: the next connection uses the new one
    assert password.encode() == b"second"
    assert "second" not in str(password) and "second" not in repr(password)


def test_plaintext_and_a_given_password(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("FLEETPULSE_HOME", str(tmp_path))
    assert KafkaSettings(kafka_security_protocol="PLAINTEXT").kafka_security() == {
        "security_protocol": "PLAINTEXT"
    }
    clean_env.setenv("FLEETPULSE_KAFKA_SASL_PASSWORD", "given-secret")
    s = KafkaSettings(kafka_security_protocol="SASL_PLAINTEXT")
    assert s.kafka_security()["sasl_plain_password"] == "given-secret"
    assert "given-secret" not in repr(s)
    (tmp_path / "pw").write_text("plain-one")
    clean_env.delenv("FLEETPULSE_KAFKA_SASL_PASSWORD")
    plain = KafkaSettings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_password_file=tmp_path / "pw",
    )
    # PLAIN joins the password as a string: it is read when the client is built.
    assert plain.kafka_security()["sasl_plain_password"] == "plain-one"


def test_each_service_is_its_own_kafka_user(clean_env: pytest.MonkeyPatch) -> None:
    from producers.settings import AgentSettings, SimulatorSettings
    from registry.settings import RegistrySettings
    from sinks.settings import SinkSettings
    from streams.settings import StreamSettings

    users = {
        cls.__name__: cls().kafka_sasl_username
        for cls in (AgentSettings, SimulatorSettings, StreamSettings, SinkSettings)
    }
    assert users == {
        "AgentSettings": "producer",
        "SimulatorSettings": "producer",
        "StreamSettings": "stream",
        "SinkSettings": "sink",
    }
    assert RegistrySettings().kafka_sasl_username == "registry"
    assert KafkaSettings().kafka_sasl_username == "admin"
