"""Alert rules: what the API takes and returns, and the form the evaluator judges with.

A rule is one of two kinds:

- **threshold**: a metric's statistic in each closed window of one resolution, compared with a
  value. `for_seconds` is how long the condition must hold, in event time (from the start of
  the first window that crossed to the end of the one that makes the span long enough), before
  the alert fires; 0 fires on the first window that crosses.
- **absence**: a server offline (per the status topic) or sending nothing for more than
  `for_seconds`.

The scope is one server, a list (`servers`), or every server (`servers` null).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.messages import MetricStats, WindowAggregate
from schemas.resolutions import Resolution


class RuleKind(StrEnum):
    THRESHOLD = "threshold"
    ABSENCE = "absence"


class Op(StrEnum):
    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


class Metric(StrEnum):
    CPU = "cpu_usage"
    MEMORY = "memory_usage"
    DISK = "disk_usage"


class Stat(StrEnum):
    AVG = "avg"
    MIN = "min"
    MAX = "max"
    LAST = "last"
    P50 = "p50"
    P90 = "p90"
    P95 = "p95"
    P99 = "p99"


#: Percentiles come from the rollups' sketches: 5 s windows carry none.
PERCENTILES: Final = frozenset({Stat.P50, Stat.P90, Stat.P95, Stat.P99})
#: Longest `for_seconds`: 30 days.
MAX_FOR_SECONDS: Final = 30 * 86_400
#: Most servers one rule may name (more: leave the scope open).
MAX_SCOPE: Final = 1000

_NAMESPACE: Final = uuid.UUID("5d0c7f0e-8f3a-4d55-9b8e-2a7c1f6e4b10")


class RuleSpec(BaseModel):
    """A rule as an admin writes it (POST creates, PUT replaces)."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")
    kind: RuleKind
    metric: Metric | None = Field(default=None, description="Threshold rules: the metric.")
    stat: Stat = Field(
        default=Stat.AVG,
        description="Threshold rules: the window's statistic. Percentiles need resolution 1h "
        "or 1d.",
    )
    resolution: Resolution = Field(
        default=Resolution.FIVE_SECONDS,
        description="Threshold rules: the windows judged (5s, 1h, 1d).",
    )
    op: Op | None = Field(default=None, description="Threshold rules: >, >=, < or <=.")
    value: float | None = Field(
        default=None, ge=0, le=100, description="Threshold rules: the threshold, in percent."
    )
    for_seconds: int = Field(
        default=0,
        ge=0,
        le=MAX_FOR_SECONDS,
        description="Threshold: how long the condition must hold before the alert fires (0: "
        "at once). Absence: how long a server must be offline or silent (at least 1).",
    )
    severity: Severity = Severity.WARNING
    servers: Annotated[list[UUID], Field(min_length=1, max_length=MAX_SCOPE)] | None = Field(
        default=None, description="The servers the rule judges; null for every server."
    )

    @model_validator(mode="after")
    def _kind_fields(self) -> Self:
        if self.kind is RuleKind.THRESHOLD:
            for name in ("metric", "op", "value"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name}: required for a threshold rule")
            if self.stat in PERCENTILES and self.resolution is Resolution.FIVE_SECONDS:
                raise ValueError(
                    f"stat: {self.stat.value} needs resolution 1h or 1d (5 s windows carry no "
                    "quantile sketch)"
                )
        else:
            for name in ("metric", "op", "value"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: not used by an absence rule")
            if self.for_seconds < 1:
                raise ValueError("for_seconds: an absence rule needs at least 1")
        return self

    def columns(self) -> dict[str, Any]:
        """Column → value for `alert_rules`."""
        d = self.model_dump(mode="json")
        if self.kind is RuleKind.ABSENCE:
            d["stat"] = d["resolution"] = None
        return d


class RulePublic(RuleSpec):
    model_config = ConfigDict(extra="ignore")

    id: int
    revision: int = Field(description="Grows with each edit.")
    created_at: datetime
    updated_at: datetime

    @model_validator(mode="before")
    @classmethod
    def _stored(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == RuleKind.ABSENCE:
            data = {k: v for k, v in data.items() if k not in ("stat", "resolution")}
        return data


@dataclass(frozen=True, slots=True)
class Rule:
    """A stored rule, as the evaluator judges with it."""

    id: int
    name: str
    kind: RuleKind
    severity: str
    for_seconds: int
    revision: int
    servers: frozenset[str] | None
    metric: str | None = None
    stat: str | None = None
    resolution: str | None = None
    op: Op | None = None
    value: float | None = None

    @classmethod
    def from_row(cls, row: Any) -> Rule:
        servers = row["servers"]
        return cls(
            id=row["id"],
            name=row["name"],
            kind=RuleKind(row["kind"]),
            severity=row["severity"],
            for_seconds=row["for_seconds"],
            revision=row["revision"],
            servers=None if servers is None else frozenset(s.lower() for s in servers),
            metric=row["metric"],
            stat=row["stat"],
            resolution=row["resolution"],
            op=None if row["op"] is None else Op(row["op"]),
            value=row["value"],
        )

    def covers(self, server_id: str) -> bool:
        return self.servers is None or server_id in self.servers

    def statistic(self, window: WindowAggregate) -> float | None:
        """This rule's statistic of `window`'s metric (None when the window has none, e.g. a
        percentile of a window restored without its sketch)."""
        assert self.metric is not None and self.stat is not None
        stats: MetricStats = getattr(window, self.metric)
        value = getattr(stats, self.stat)
        return None if value is None else float(value)

    def crosses(self, value: float) -> bool:
        assert self.value is not None
        match self.op:
            case Op.GT:
                return value > self.value
            case Op.GE:
                return value >= self.value
            case Op.LT:
                return value < self.value
            case _:
                return value <= self.value

    def describe(self) -> str:
        if self.kind is RuleKind.ABSENCE:
            return f"offline or silent for more than {self.for_seconds} s"
        held = f" for {self.for_seconds} s" if self.for_seconds else ""
        op = self.op.value if self.op is not None else "?"
        return f"{self.stat} {self.metric} over {self.resolution} {op} {self.value:g}{held}"

    def labels(self, server_id: str) -> dict[str, str]:
        """The labels Alertmanager groups, routes and deduplicates by."""
        labels = {
            "alertname": self.name,
            "severity": self.severity,
            "server_id": server_id,
            "rule_id": str(self.id),
            "kind": self.kind.value,
            "source": "fleetpulse",
        }
        if self.kind is RuleKind.THRESHOLD:
            labels |= {"metric": str(self.metric), "stat": str(self.stat)}
        return labels


def fingerprint(rule_id: int, server_id: str) -> str:
    """The alert's identity: one rule on one server."""
    return hashlib.sha256(f"{rule_id}/{server_id}".encode()).hexdigest()[:16]


def event_id(fp: str, status: str, starts_at: datetime, revision: int) -> str:
    """The same change of the same alert always has the same id (a replay adds nothing)."""
    return str(uuid.uuid5(_NAMESPACE, f"{fp}/{status}/{starts_at.isoformat()}/{revision}"))
