"""The registry's settings: defaults, FLEETPULSE_* variables, HTTPS with the home's certificate
unless both files are given, plain HTTP only when asked (and then without certificate files),
the key file under the home unless given, bounds named in the refusal, keys kept secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.settings import RegistrySettings
from runtime.settings import REGISTRY_ROLE
from schemas.topics import STATUS


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    s = RegistrySettings()
    assert (s.registry_host, s.registry_port, s.scheme) == ("127.0.0.1", 8080, "https")
    assert (s.registry_tls_cert, s.registry_tls_key, s.registry_keys) == (None, None, None)
    assert s.registry_plain_http is False
    tls = Path(".fleetpulse").resolve() / "tls"
    assert (s.tls_cert_path, s.tls_key_path) == (tls / "registry.crt", tls / "registry.key")
    assert (s.registry_pool_size, s.session_hours, s.max_points) == (10, 12.0, 10_000)
    assert (s.login_max_failures, s.login_window, s.login_lockout) == (5, 900.0, 900.0)
    assert (s.registry_consume_status, s.registry_group) == (True, "fleetpulse-registry")
    assert (s.status_topic, s.metrics_port) == (STATUS.name, 0)
    assert (s.pg_database, s.kafka_bootstrap) == ("fleetpulse", "127.0.0.1:19092")
    assert s.pg_user == REGISTRY_ROLE
    assert s.password_path == s.home_dir / "secrets" / "pg" / REGISTRY_ROLE


def test_settings_come_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FLEETPULSE_REGISTRY_PORT", "0")
    clean_env.setenv("FLEETPULSE_REGISTRY_CONSUME_STATUS", "false")
    clean_env.setenv("FLEETPULSE_LOGIN_WINDOW", "60")
    clean_env.setenv("FLEETPULSE_SESSION_HOURS", "0.5")
    clean_env.setenv("FLEETPULSE_STATUS_TOPIC", "test.status")
    clean_env.setenv("FLEETPULSE_PG_DATABASE", "registry_x")
    s = RegistrySettings()
    assert (s.registry_port, s.registry_consume_status) == (0, False)
    assert (s.login_window, s.session_hours, s.status_topic) == (60.0, 0.5, "test.status")
    assert s.pg_database == "registry_x"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("registry_port", "65536"),
        ("registry_pool_size", "0"),
        ("registry_pool_size", "101"),
        ("session_hours", "0"),
        ("session_hours", "2161"),
        ("login_max_failures", "0"),
        ("login_window", "0"),
        ("login_lockout", "-1"),
        ("max_points", "1000001"),
        ("metrics_port", "-1"),
    ],
)
def test_values_out_of_bounds_are_refused_by_name(
    clean_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    clean_env.setenv(f"FLEETPULSE_{name.upper()}", value)
    with pytest.raises(ValueError, match=name):
        RegistrySettings()


def test_tls_needs_both_the_certificate_and_the_key(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    with pytest.raises(ValueError, match="registry_tls_cert and registry_tls_key go together"):
        RegistrySettings(registry_tls_cert=cert)
    with pytest.raises(ValueError, match="registry_tls_cert and registry_tls_key go together"):
        RegistrySettings(registry_tls_key=key)
    clean_env.setenv("FLEETPULSE_REGISTRY_TLS_CERT", str(cert))
    with pytest.raises(ValueError, match="go together"):
        RegistrySettings()
    clean_env.setenv("FLEETPULSE_REGISTRY_TLS_KEY", str(key))
    s = RegistrySettings()
    assert (s.registry_tls_cert, s.registry_tls_key, s.scheme) == (cert, key, "https")
    assert (s.tls_cert_path, s.tls_key_path) == (cert, key)


def test_the_certificate_is_under_the_home_unless_given(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("FLEETPULSE_HOME", str(tmp_path / "home"))
    s = RegistrySettings()
    assert s.tls_cert_path == tmp_path / "home" / "tls" / "registry.crt"
    assert s.tls_key_path == tmp_path / "home" / "tls" / "registry.key"


def test_plain_http_only_when_asked_and_without_certificate_files(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("FLEETPULSE_REGISTRY_PLAIN_HTTP", "true")
    s = RegistrySettings()
    assert (s.registry_plain_http, s.scheme) == (True, "http")
    clean_env.setenv("FLEETPULSE_REGISTRY_TLS_CERT", str(tmp_path / "registry.crt"))
    clean_env.setenv("FLEETPULSE_REGISTRY_TLS_KEY", str(tmp_path / "registry.key"))
    with pytest.raises(ValueError, match="registry_plain_http and registry_tls_cert"):
        RegistrySettings()


def test_the_key_file_is_under_the_home_unless_given(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("FLEETPULSE_HOME", str(tmp_path / "home"))
    assert RegistrySettings().key_path == tmp_path / "home" / "secrets" / "registry_keys"
    clean_env.setenv("FLEETPULSE_REGISTRY_KEY_FILE", str(tmp_path / "keys"))
    assert RegistrySettings().key_path == tmp_path / "keys"


def test_the_keys_never_show_in_the_repr(clean_env: pytest.MonkeyPatch) -> None:
    keys = "1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    clean_env.setenv("FLEETPULSE_REGISTRY_KEYS", keys)
    s = RegistrySettings()
    assert keys not in repr(s) and keys not in str(s.model_dump())
    assert s.registry_keys is not None and s.registry_keys.get_secret_value() == keys
