"""Settings of the alert evaluator (`fleetpulse alerts`)."""

from __future__ import annotations

from pydantic import Field, HttpUrl, SecretStr
from pydantic_settings import SettingsConfigDict

from runtime.settings import ALERTS_ROLE, KafkaSettings, PostgresSettings, ServiceSettings
from schemas.resolutions import per_resolution
from schemas.topics import ALERTS, STATUS


class AlertsSettings(KafkaSettings, PostgresSettings, ServiceSettings):
    """The alert evaluator: a downstream consumer of the aggregate and status topics."""

    model_config = SettingsConfigDict(env_nested_delimiter="__")

    kafka_sasl_username: str = Field(
        default="alerts", description="Kafka user (principal) of this service."
    )
    pg_user: str = Field(
        default=ALERTS_ROLE,
        description="Database role of the evaluator: reads the rules and the inventory, writes "
        "its state, position and the alert history.",
    )
    alerts_group: str = Field(
        default="fleetpulse-alerts",
        description="Kafka consumer group the evaluator commits its position in (for the lag "
        "report; its own position is kept in PostgreSQL, with its state).",
    )
    agg_topics: dict[str, str] = Field(
        default_factory=lambda: per_resolution(lambda r: r.topic),
        description="Aggregate topic of each resolution, as the stream worker writes them.",
    )
    status_topic: str = Field(default=STATUS.name, description="Server status topic.")
    alerts_topic: str = Field(
        default=ALERTS.name, description="Where firing and resolved events are published."
    )
    alerts_rules_refresh: float = Field(
        default=2.0,
        gt=0,
        description="How often the rules are read again from PostgreSQL, s: an edit through "
        "the API takes effect within this.",
    )
    alerts_tick: float = Field(
        default=1.0,
        gt=0,
        description="How often absence rules are judged against the clock, s.",
    )
    alertmanager_url: HttpUrl | None = Field(
        default=None,
        description="Alertmanager to deliver to (its v2 API), e.g. http://127.0.0.1:9093. "
        "Unset: `http://127.0.0.1:<FLEETPULSE_ALERTMANAGER_PORT>` when the local stack's "
        "Alertmanager runs (`fleetpulse stack up --monitoring`), else no Alertmanager.",
    )
    alertmanager_port: int = Field(
        default=19093,
        ge=1,
        le=65535,
        description="Port of the local stack's Alertmanager.",
    )
    alerts_resend: float = Field(
        default=30.0,
        gt=0,
        description="How often firing alerts are sent to Alertmanager again, s (each with "
        "`endsAt` four of these ahead, so an evaluator that died lets them expire).",
    )
    alerts_webhook_url: HttpUrl | None = Field(
        default=None,
        description="A generic webhook that gets every firing and resolved event as JSON "
        "(POST, the AlertEvent), retried with backoff until it answers 2xx. For those without "
        "Alertmanager; both may be set.",
    )
    alerts_webhook_token: SecretStr | None = Field(
        default=None,
        description="Bearer token sent to the webhook (`Authorization: Bearer …`).",
    )
    alerts_delivery_timeout: float = Field(
        default=5.0, gt=0, description="Seconds one delivery request may take."
    )
    alerts_absence_grace: float = Field(
        default=10.0,
        gt=0,
        description="Seconds without a 5 s window after which a server counts as silent (an "
        "absence rule's alert is then pending; it fires after the rule's duration).",
    )
