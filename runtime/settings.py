"""Connection settings every FleetPulse service shares, read from `FLEETPULSE_*` variables.

Each service's own settings model inherits the pieces it needs, so one variable means the
same thing everywhere. Defaults point at the local stack (`fleetpulse stack up`).
Validation does no I/O but for one small file (the local cluster's broker count, when
FLEETPULSE_KAFKA_BROKERS is unset); files (password, CA) are read when a connection is made.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "FLEETPULSE_"

#: The database's login roles (README, *Database roles*; the grants are in
#: `infra/db/sql/0005_roles.*.sql`). The owner runs the migrations, the stack and the backups;
#: each service logs in as its own role.
OWNER_ROLE = "fleetpulse"
SINK_ROLE = "fleetpulse_sink"
REGISTRY_ROLE = "fleetpulse_registry"
ALERTS_ROLE = "fleetpulse_alerts"
#: Read-only, for dashboards.
READER_ROLE = "fleetpulse_reader"
SERVICE_ROLES = (SINK_ROLE, REGISTRY_ROLE, ALERTS_ROLE, READER_ROLE)
#: How far apart the ports of the local cluster's brokers are: broker n (1, 2, 3) listens on
#: each of the first broker's ports plus `(n - 1) * NODE_PORT_STEP`.
NODE_PORT_STEP = 10


def role_password_path(home_dir: Path, role: str) -> Path:
    """Where the local stack keeps the password of `role`: `<home>/secrets/pg/<role>`."""
    return home_dir / "secrets" / "pg" / role


class HomeSettings(BaseSettings):
    """Where the local stack keeps everything it writes."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    home: Path = Field(
        default=Path(".fleetpulse"),
        description=(
            "Folder for everything the local stack writes: broker and database data, WAL "
            "archive, backups, TLS material, generated secrets, logs. Relative to the working "
            "directory unless absolute."
        ),
    )

    @property
    def home_dir(self) -> Path:
        return self.home.resolve()


class KafkaSettings(HomeSettings):
    """How to reach Kafka, and how every client of a service is tuned (`runtime/kafka.py`
    builds the clients from these and nothing else)."""

    kafka_bootstrap: str = Field(
        default="127.0.0.1:19092",
        description="Kafka bootstrap servers, comma-separated host:port. With "
        "FLEETPULSE_KAFKA_BROKERS above 1 and one address given, the local cluster's other "
        "brokers are added (same host, ports 10 and 20 up), so a client starts even when the "
        "first broker is down.",
    )
    kafka_brokers: int = Field(
        default=1,
        ge=1,
        le=5,
        description="Brokers of the Kafka cluster (`fleetpulse stack up --brokers 3` runs "
        "three). Topics are created with replication factor min(brokers, 3) and, at 3, "
        "min.insync.replicas=2: an acknowledged write survives the loss of a broker. With one "
        "broker nothing is replicated: losing its disk loses the topics. Unset: as many as "
        "the local stack's cluster was formatted with (`<home>/kafka/brokers`), else 1.",
    )
    kafka_client_id: str = Field(default="fleetpulse", description="Client id sent to Kafka.")
    compression: Literal["lz4", "gzip", "zstd", "snappy", "none"] = Field(
        default="lz4", description="Compression of record batches sent to Kafka."
    )
    linger_ms: int = Field(
        default=5, ge=0, le=1000, description="How long a producer waits to fill a batch, ms."
    )
    kafka_max_batch_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        description="Largest record batch a producer builds per partition, bytes (256 KiB: a "
        "second of a 10,000-host fleet's partition fits in a few).",
    )
    kafka_fetch_max_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Most bytes one consumer fetch returns (16 MiB: a full batch of raw events "
        "with room to spare, without aiokafka's 50 MiB default held per consumer).",
    )
    kafka_partition_fetch_max_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Most bytes one consumer fetch returns per partition (8 MiB: aiokafka's "
        "1 MiB default left a catching-up worker waiting for the next fetch a third of the "
        "time; the next fetch of a partition starts only once its records are taken).",
    )
    kafka_session_timeout_ms: int = Field(
        default=10_000,
        ge=1000,
        description="How long the group waits for a silent consumer before it reassigns its "
        "partitions, ms.",
    )
    kafka_heartbeat_interval_ms: int = Field(
        default=1_000, ge=100, description="Consumer heartbeat interval, ms."
    )
    kafka_request_timeout_ms: int = Field(
        default=30_000, ge=1000, description="How long a client waits for a broker reply, ms."
    )
    kafka_security_protocol: Literal["SASL_SSL", "SSL", "SASL_PLAINTEXT", "PLAINTEXT"] = Field(
        default="SASL_SSL",
        description="How clients talk to Kafka: `SASL_SSL` (TLS, and a SCRAM user) on the local "
        "stack; `PLAINTEXT` only towards a listener that an operator opened for it.",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism of the Kafka user."
    )
    kafka_sasl_username: str = Field(
        default="admin",
        description="Kafka user (principal) of this service. Each service defaults to its own: "
        "`producer` (agent, simulator, producer library), `stream`, `sink`, `registry`; the "
        "stack's tools use `admin`.",
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None,
        description="Password of the Kafka user. If unset, read from "
        "`kafka_sasl_password_file` each time a client connects.",
    )
    kafka_sasl_password_file: Path | None = Field(
        default=None,
        description="File holding the Kafka user's password; default "
        "`<home>/secrets/kafka/<kafka_sasl_username>` (the local stack generates it).",
    )
    kafka_ca_file: Path | None = Field(
        default=None,
        description="CA certificate the broker's certificate is checked against (host name "
        "included); default `<home>/tls/ca.crt`.",
    )

    @model_validator(mode="after")
    def _whole_cluster_bootstrap(self) -> Self:
        if "kafka_brokers" not in self.model_fields_set:
            # Unset: as many as the local stack's cluster was formatted with (its one file).
            with contextlib.suppress(OSError, ValueError):
                self.kafka_brokers = int((self.home_dir / "kafka" / "brokers").read_text())
        if self.kafka_brokers > 1 and "," not in self.kafka_bootstrap:
            host, port = self.kafka_bootstrap.strip().rsplit(":", 1)
            self.kafka_bootstrap = ",".join(
                f"{host}:{int(port) + n * NODE_PORT_STEP}" for n in range(self.kafka_brokers)
            )
        return self

    @property
    def kafka_replication_factor(self) -> int:
        """Replicas of every topic FleetPulse creates."""
        return min(self.kafka_brokers, 3)

    @property
    def kafka_min_insync(self) -> int:
        """`min.insync.replicas` of those topics: with acks=all, a write is acknowledged once
        this many replicas have it (2 of 3, so one broker may be lost)."""
        return 2 if self.kafka_replication_factor >= 3 else 1

    @property
    def kafka_password_path(self) -> Path:
        return (
            self.kafka_sasl_password_file
            or self.home_dir / "secrets" / "kafka" / self.kafka_sasl_username
        )

    @property
    def kafka_ca_path(self) -> Path:
        return self.kafka_ca_file or self.home_dir / "tls" / "ca.crt"

    def kafka_security(self) -> dict[str, Any]:
        """Keyword arguments of every aiokafka client for the configured security protocol:
        the TLS context (the CA file is read on call) and the SASL user, whose password file is
        read again at each new connection, so a rotated password is picked up without a
        restart."""
        protocol = self.kafka_security_protocol
        options: dict[str, Any] = {"security_protocol": protocol}
        if protocol in ("SSL", "SASL_SSL"):
            ca = self.kafka_ca_path
            if not ca.exists():
                raise FileNotFoundError(
                    f"Kafka over TLS needs the CA certificate at {ca} (set "
                    "FLEETPULSE_KAFKA_CA_FILE, or start the local stack to create it)"
                )
            options["ssl_context"] = ssl.create_default_context(cafile=str(ca))
        if protocol.startswith("SASL_"):
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            password: str
            if self.kafka_sasl_password is not None:
                password = self.kafka_sasl_password.get_secret_value()
            else:
                password = PasswordFile(self.kafka_password_path)
                if self.kafka_sasl_mechanism == "PLAIN":  # PLAIN joins it as a string
                    password = password.read()
            options["sasl_plain_password"] = password
        return options


class LazySecurity(Mapping[str, Any]):
    """`KafkaSettings().kafka_security()` made at first use, for `**` into a client that a
    module builds itself: importing the module needs no CA file yet."""

    def __init__(self) -> None:
        self._options: dict[str, Any] | None = None

    def _get(self) -> dict[str, Any]:
        if self._options is None:
            self._options = KafkaSettings().kafka_security()
        return self._options

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


class PasswordFile(str):
    """A password that is its file's content at the moment it is used.

    aiokafka keeps the `sasl_plain_password` it was given and encodes it at each connection's
    SASL handshake; this one reads the file there, so a password rotated on disk (`fleetpulse
    stack rotate-password`) is used from the next connection on. As a string it shows only
    where the password lives.
    """

    path: Path

    def __new__(cls, path: Path) -> PasswordFile:
        self = super().__new__(cls, f"<password in {path}>")
        self.path = path
        return self

    def read(self) -> str:
        try:
            return self.path.read_text().strip()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"the Kafka password file {self.path} does not exist (set "
                "FLEETPULSE_KAFKA_SASL_PASSWORD_FILE, or start the local stack to create it)"
            ) from None

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.read().encode(encoding, errors)


class RetrySettings(HomeSettings):
    """The capped, jittered backoff of every retry loop (`runtime/backoff.py`)."""

    retry_min: float = Field(
        default=0.5, gt=0, description="First retry delay after a dependency failed, s."
    )
    retry_max: float = Field(default=30.0, gt=0, description="Longest retry delay, s.")
    retry_probe_every: float = Field(
        default=0.5,
        gt=0,
        description="While waiting out a retry delay, how often a cheap probe (a TCP connect) "
        "checks whether the dependency is back, s; when it is, the retry happens at once.",
    )

    @model_validator(mode="after")
    def _min_below_max(self) -> Self:
        if self.retry_max < self.retry_min:
            raise ValueError("retry_max must be at least retry_min")
        return self


class TelemetrySettings(HomeSettings):
    """Where a service serves /metrics and /health (`runtime/telemetry.py`)."""

    metrics_host: str = Field(default="127.0.0.1", description="Address of /metrics and /health.")
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Port of /metrics and /health; 0 = off."
    )


class ServiceSettings(RetrySettings, TelemetrySettings):
    """What every long-running service has (`runtime/service.py`)."""

    stop_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a service has, after SIGTERM/SIGINT, to finish the batch in hand "
        "and flush before it is cancelled.",
    )


class PostgresSettings(HomeSettings):
    """How to reach PostgreSQL (or TimescaleDB)."""

    pg_host: str = Field(default="127.0.0.1", description="PostgreSQL host.")
    pg_port: int = Field(default=55432, ge=1, le=65535, description="PostgreSQL port.")
    pg_database: str = Field(default="fleetpulse", description="Database name.")
    # The least privileged role, so a model that forgets to choose one can only read.
    pg_user: str = Field(
        default=READER_ROLE,
        description="Database role to log in as; each service has its own (README, *Database "
        "roles*).",
    )
    pg_password: SecretStr | None = Field(
        default=None,
        description=(
            "Password of `pg_user`. If unset, read from `pg_password_file` at each new "
            "connection (the local stack generates `<home>/secrets/pg/<pg_user>`)."
        ),
    )
    pg_password_file: Path | None = Field(
        default=None,
        description="File holding the password of `pg_user`; default "
        "`<home>/secrets/pg/<pg_user>`.",
    )
    pg_sslmode: Literal["disable", "require", "verify-ca", "verify-full"] = Field(
        default="verify-full",
        description=(
            "TLS towards PostgreSQL. `verify-full` checks the server certificate against "
            "`pg_sslrootcert` and the host name."
        ),
    )
    pg_sslrootcert: Path | None = Field(
        default=None,
        description="CA certificate for verify-ca/verify-full; default `<home>/tls/ca.crt`.",
    )
    pg_storage: Literal["auto", "timescaledb", "postgres"] = Field(
        default="auto",
        description=(
            "Storage mode for migrations: `timescaledb` (hypertables and policies), `postgres` "
            "(daily range partitions), or `auto` (TimescaleDB when the extension is available)."
        ),
    )
    pg_connect_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to wait for a database connection."
    )

    @property
    def password_path(self) -> Path:
        return self.pg_password_file or role_password_path(self.home_dir, self.pg_user)

    @property
    def ca_path(self) -> Path:
        return self.pg_sslrootcert or self.home_dir / "tls" / "ca.crt"

    def password(self) -> str | None:
        """The database password from the setting or the password file (read on call)."""
        if self.pg_password is not None:
            return self.pg_password.get_secret_value()
        path = self.password_path
        return path.read_text().strip() if path.exists() else None

    def _login_password(self) -> str:
        """The password for a new connection: what asyncpg calls each time it opens one, so a
        rotated password file is picked up by a pool's next connection."""
        password = self.password()
        if password is None:
            raise FileNotFoundError(
                f"no password for database role {self.pg_user!r}: {self.password_path} does "
                "not exist (set FLEETPULSE_PG_PASSWORD or FLEETPULSE_PG_PASSWORD_FILE, or run "
                "`fleetpulse stack up`, which generates it)"
            )
        return password

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What asyncpg's `ssl=` takes for `pg_sslmode` (reads the CA file on call)."""
        if self.pg_sslmode == "disable":
            return False
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.pg_sslmode == "require":
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        ca = self.ca_path
        if not ca.exists():
            raise FileNotFoundError(
                f"sslmode={self.pg_sslmode} needs the CA certificate at {ca} "
                "(set FLEETPULSE_PG_SSLROOTCERT, or start the local stack to create it)"
            )
        ctx.load_verify_locations(cafile=str(ca))
        ctx.check_hostname = self.pg_sslmode == "verify-full"
        return ctx

    def connect_kwargs(self, database: str | None = None) -> dict[str, Any]:
        """Keyword arguments for `asyncpg.connect` / `asyncpg.create_pool`. The password is a
        callable unless given as a value: the file is read at each new connection."""
        password: str | Callable[[], str] = self._login_password
        if self.pg_password is not None:
            password = self.pg_password.get_secret_value()
        return {
            "host": self.pg_host,
            "port": self.pg_port,
            "user": self.pg_user,
            "password": password,
            "database": database or self.pg_database,
            "ssl": self.ssl_context(),
            "timeout": self.pg_connect_timeout,
        }

    def describe(self) -> str:
        """Where the database is, for messages (never includes the password)."""
        return (
            f"postgresql://{self.pg_user}@{self.pg_host}:{self.pg_port}/{self.pg_database}"
            f"?sslmode={self.pg_sslmode}"
        )
