"""Settings of the registry service (`fleetpulse registry`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from runtime.settings import REGISTRY_ROLE, KafkaSettings, PostgresSettings, ServiceSettings
from schemas.topics import STATUS


class RegistrySettings(KafkaSettings, PostgresSettings, ServiceSettings):
    """The HTTP API for users, the server inventory and metric reads, and the status consumer."""

    pg_user: str = Field(
        default=REGISTRY_ROLE,
        description="Database role of the registry: its own tables (users, servers, sessions, "
        "failed logins) and reads of the metric tables.",
    )
    registry_host: str = Field(default="127.0.0.1", description="Address the HTTP API binds to.")
    registry_port: int = Field(
        default=8080, ge=0, le=65535, description="Port of the HTTP API (0: any free port)."
    )
    registry_tls_cert: Path | None = Field(
        default=None,
        description=(
            "Certificate (PEM, the chain after it) the API serves HTTPS with; default "
            "`<home>/tls/registry.crt`, which `fleetpulse stack up` issues from the stack's CA. "
            "Read again when it changes on disk. Needs `registry_tls_key`."
        ),
    )
    registry_tls_key: Path | None = Field(
        default=None,
        description=(
            "Private key (PEM, unencrypted) of `registry_tls_cert`; default "
            "`<home>/tls/registry.key`."
        ),
    )
    registry_plain_http: bool = Field(
        default=False,
        description=(
            "Serve plain HTTP instead of HTTPS (a warning at startup): bearer tokens and "
            "passwords then cross the network readable. Only behind a proxy on the same host "
            "that terminates TLS, or for an experiment."
        ),
    )
    registry_keys: SecretStr | None = Field(
        default=None,
        description=(
            "AES-256 keys for server passwords: `version:base64key` pairs, comma-separated "
            "(e.g. `1:…,2:…`); the highest version encrypts. If unset, read from "
            "`registry_key_file`."
        ),
    )
    registry_key_file: Path | None = Field(
        default=None,
        description=(
            "File of `version:base64key` lines; default `<home>/secrets/registry_keys`, "
            "generated (mode 0600) when missing."
        ),
    )
    registry_pool_size: int = Field(
        default=10, ge=1, le=100, description="Most database connections of one registry process."
    )
    session_hours: float = Field(
        default=12.0, gt=0, le=24 * 90, description="Hours a login session stays valid."
    )
    login_max_failures: int = Field(
        default=5,
        ge=1,
        description="Failed logins for one e-mail within `login_window` that lock it.",
    )
    login_window: float = Field(
        default=900.0, gt=0, description="Seconds over which failed logins are counted."
    )
    login_lockout: float = Field(
        default=900.0, gt=0, description="Seconds an e-mail stays locked after too many failures."
    )
    max_points: int = Field(
        default=10_000, ge=1, le=1_000_000, description="Most points one metrics request returns."
    )
    registry_consume_status: bool = Field(
        default=True,
        description="Consume `metrics.status.v1` in this process to keep `servers.is_online`.",
    )
    kafka_sasl_username: str = Field(
        default="registry", description="Kafka user (principal) of this service."
    )
    registry_group: str = Field(
        default="fleetpulse-registry",
        description="Kafka consumer group of the registry's status consumer.",
    )
    status_topic: str = Field(default=STATUS.name, description="Topic of server status changes.")
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="A separate port for /metrics and /health; 0 = none (the API serves "
        "/metrics and /health itself).",
    )

    @model_validator(mode="after")
    def _tls_needs_both(self) -> RegistrySettings:
        if (self.registry_tls_cert is None) != (self.registry_tls_key is None):
            raise ValueError("registry_tls_cert and registry_tls_key go together")
        if self.registry_plain_http and self.registry_tls_cert is not None:
            raise ValueError(
                "registry_plain_http and registry_tls_cert/registry_tls_key exclude each other"
            )
        return self

    @property
    def key_path(self) -> Path:
        return self.registry_key_file or self.home_dir / "secrets" / "registry_keys"

    @property
    def tls_cert_path(self) -> Path:
        return self.registry_tls_cert or self.home_dir / "tls" / "registry.crt"

    @property
    def tls_key_path(self) -> Path:
        return self.registry_tls_key or self.home_dir / "tls" / "registry.key"

    @property
    def scheme(self) -> str:
        return "http" if self.registry_plain_http else "https"
