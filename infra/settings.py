"""Settings of the local stack and the command line (`FLEETPULSE_*` variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from runtime.settings import OWNER_ROLE, KafkaSettings, PostgresSettings


class StackSettings(KafkaSettings, PostgresSettings):
    """The local Kafka broker and PostgreSQL cluster that `fleetpulse stack` runs."""

    pg_user: str = Field(
        default=OWNER_ROLE,
        description="Database role of the stack, the migrations and the backups: the "
        "database's owner (the services log in as roles of their own).",
    )
    kafka_controller_port: int = Field(
        default=19093, ge=1, le=65535, description="Port of the KRaft controller listener."
    )
    kafka_internal_port: int = Field(
        default=19094,
        ge=1,
        le=65535,
        description="Port of the broker's inter-broker listener (mutual TLS, the broker's own "
        "certificate; the stack's tools reach the broker there too).",
    )
    kafka_plaintext_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of an extra listener WITHOUT TLS or authentication, for a client "
        "that can do neither (every client on it may do anything); 0 = none, the default. "
        "The broker logs a warning while it is open.",
    )
    kafka_proxied_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of a second client listener for clients that reach the broker "
        "through a TCP proxy or NAT (it advertises FLEETPULSE_KAFKA_PROXY_PORT, so their "
        "connections keep going through it); 0 = none.",
    )
    kafka_proxy_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of that proxy, on the broker's host: what the second listener "
        "advertises.",
    )
    tls_hostnames: list[str] = Field(
        default_factory=list,
        description="More names (DNS names or IP addresses) the broker's and the registry's "
        "certificates carry, besides localhost and the loopback addresses: the names other "
        'machines reach them by, as a JSON list (`["metrics1.example.net", "10.0.0.5"]`). '
        "A certificate lacking one is issued again at `stack up`.",
    )
    kafka_heap: str = Field(
        default="512m",
        description="Java heap of each local broker (-Xmx): a broker at 512m is about 730 MiB "
        "resident (README, *Three brokers*).",
    )
    kafka_start_timeout: float = Field(
        default=90.0, gt=0, description="Seconds to wait for the broker to become healthy."
    )
    pg_start_timeout: float = Field(
        default=60.0, gt=0, description="Seconds to wait for PostgreSQL to accept connections."
    )
    pg_os_user: str = Field(
        default="postgres",
        description=(
            "Unprivileged system user that runs the cluster when the stack is started by root "
            "(PostgreSQL refuses to run as root). Ignored for other users."
        ),
    )
    pg_bin_dir: str | None = Field(
        default=None,
        description="Folder with initdb/pg_ctl/postgres; default: PostgreSQL 15 from Debian.",
    )
    wal_archive_timeout: int = Field(
        default=300,
        ge=0,
        description="archive_timeout in seconds: the longest WAL stays unarchived (RPO).",
    )
    backup_repo_path: Path | None = Field(
        default=None,
        description="Folder of the pgBackRest repository (encrypted base backups and archived "
        "WAL); default `<home>/backups/pgbackrest`.",
    )
    backup_retention_full: int = Field(
        default=7,
        ge=1,
        description="Full backups pgBackRest keeps; WAL older than the oldest kept one is "
        "expired with it.",
    )
    backup_compress: Literal["zst", "lz4", "gz", "bz2", "none"] = Field(
        default="zst", description="Compression of the repository's files."
    )
    backup_options: dict[str, str] = Field(
        default_factory=dict,
        description="More pgBackRest options for its `[global]` section, by pgBackRest's own "
        'names, as a JSON object: a second repository is `{"repo2-path": "/mnt/other"}` (another '
        'disk) or `{"repo2-host": "backup1", ...}` (another host).',
    )

    monitoring: bool = Field(
        default=False,
        description="`stack up` also starts Prometheus, Alertmanager and the PostgreSQL "
        "exporter, and the broker with the JMX exporter agent (`stack up --monitoring` sets it "
        "for one call).",
    )
    prometheus_port: int = Field(
        default=19090, ge=1, le=65535, description="Port of Prometheus (on 127.0.0.1)."
    )
    prometheus_scrape_interval: float = Field(
        default=15.0,
        gt=0,
        le=300,
        description="Seconds between two scrapes of a target (and between rule evaluations).",
    )
    prometheus_retention: str = Field(
        default="15d",
        pattern=r"^[0-9]+(ms|s|m|h|d|w|y)$",
        description="How long Prometheus keeps samples (`--storage.tsdb.retention.time`).",
    )
    alertmanager_port: int = Field(
        default=19093, ge=1, le=65535, description="Port of Alertmanager (on 127.0.0.1)."
    )
    alertmanager_config: Path | None = Field(
        default=None,
        description="An Alertmanager configuration of one's own (routes, e-mail, chat): used "
        "as it is, checked with amtool first. Unset: one is generated, routing every alert to "
        "`alertmanager_webhook_url` (README, *Alerts*).",
    )
    alertmanager_webhook_url: str | None = Field(
        default=None,
        description="The generated configuration's receiver: a webhook that gets every "
        "notification (firing and resolved). Unset: notifications are kept in Alertmanager "
        "only (its UI and API show them).",
    )
    alertmanager_group_wait: float = Field(
        default=10.0,
        gt=0,
        description="Seconds Alertmanager waits to group a new alert with others before it "
        "notifies (generated configuration).",
    )
    alertmanager_group_interval: float = Field(
        default=60.0,
        gt=0,
        description="Seconds between notifications of a group that changed (generated "
        "configuration).",
    )
    alertmanager_repeat_interval: float = Field(
        default=4 * 3600.0,
        gt=0,
        description="Seconds before a notification that did not change is sent again "
        "(generated configuration).",
    )
    postgres_exporter_port: int = Field(
        default=19187,
        ge=1,
        le=65535,
        description="Port of the PostgreSQL exporter's /metrics (on 127.0.0.1).",
    )
    kafka_jmx_port: int = Field(
        default=19181,
        ge=1,
        le=65535,
        description="Port of the JMX exporter agent in broker 1 (on 127.0.0.1); broker N "
        "serves on this port + N - 1.",
    )
    scrape_targets: dict[str, list[str]] = Field(
        default_factory=dict,
        description="The `host:port` addresses Prometheus scrapes for a service, by service "
        "(agent, simulator, stream, sink, registry, backup), as a JSON object: "
        '`{"stream": ["127.0.0.1:9473", "127.0.0.1:9483"]}`; `[]` scrapes none. A service '
        "not named is scraped where its own settings put its /metrics.",
    )

    @model_validator(mode="after")
    def _proxy_ports_together(self) -> StackSettings:
        if bool(self.kafka_proxied_port) != bool(self.kafka_proxy_port):
            raise ValueError(
                "FLEETPULSE_KAFKA_PROXIED_PORT and FLEETPULSE_KAFKA_PROXY_PORT go together"
            )
        if self.kafka_proxied_port and self.kafka_brokers > 1:
            raise ValueError(
                "FLEETPULSE_KAFKA_PROXIED_PORT needs a single broker (FLEETPULSE_KAFKA_BROKERS=1): "
                "one proxy port cannot stand for several brokers"
            )
        return self

    @property
    def backup_repo(self) -> Path:
        """The pgBackRest repository's folder."""
        return self.backup_repo_path or self.home_dir / "backups" / "pgbackrest"

    @property
    def kafka_port(self) -> int:
        return int(self.kafka_bootstrap.split(",")[0].rsplit(":", 1)[1])

    @property
    def kafka_host(self) -> str:
        return self.kafka_bootstrap.split(",")[0].rsplit(":", 1)[0]
