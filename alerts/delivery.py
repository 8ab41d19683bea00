"""Where alerts go besides the topic: Alertmanager's v2 API, and a generic webhook.

- **Alertmanager** gets each firing alert when it begins, then again every `alerts_resend`
  while it fires (with `endsAt` four resends ahead: an evaluator that died lets it expire), and
  once with its `endsAt` when resolved. Alertmanager identifies an alert by its labels and
  notifies a receiver once per change of a group, so a re-sent firing alert notifies nobody.
- **The webhook** gets every event once, as the AlertEvent JSON, retried with backoff until it
  answers 2xx; a restart retries what it had not yet taken (the outbox in `alert_events`).
  `event_id` lets it discard the rare event it got twice (taken, and the evaluator died before
  it wrote that down).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx

from alerts.rules import Rule
from runtime.errors import FleetPulseError


class DeliveryError(FleetPulseError):
    """An output refused or did not answer (the message names the output and the status)."""


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def alertmanager_alert(event: dict[str, Any]) -> dict[str, Any]:
    """One event (AlertEvent JSON) as Alertmanager's v2 `postableAlert`."""
    alert: dict[str, Any] = {
        "labels": event["labels"],
        "annotations": {"summary": event["summary"]},
        "startsAt": event["starts_at"].replace("+00:00", "Z"),
    }
    if event.get("value") is not None:
        alert["annotations"]["value"] = f"{event['value']:g}"
    if event["status"] == "resolved" and event.get("ends_at"):
        alert["endsAt"] = event["ends_at"].replace("+00:00", "Z")
    return alert


def still_firing(
    rule: Rule, server_id: str, fired_at: datetime, value: float | None, until: datetime
) -> dict[str, Any]:
    """A firing alert re-sent: `endsAt` at `until`, unless it is sent again before."""
    annotations = {"summary": f"{rule.name}: server {server_id} {rule.describe()}"}
    if value is not None:
        annotations["value"] = f"{value:g}"
    return {
        "labels": rule.labels(server_id),
        "annotations": annotations,
        "startsAt": _iso(fired_at),
        "endsAt": _iso(until),
    }


class Alertmanager:
    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(timeout=timeout)

    async def post(self, alerts: Sequence[dict[str, Any]]) -> None:
        if not alerts:
            return
        try:
            r = await self._client.post(f"{self.url}/api/v2/alerts", json=list(alerts))
        except httpx.HTTPError as exc:
            raise DeliveryError(f"Alertmanager at {self.url}: {type(exc).__name__}") from None
        if r.status_code >= 300:
            raise DeliveryError(
                f"Alertmanager at {self.url} answered {r.status_code}: {r.text[:200]}"
            )

    async def close(self) -> None:
        await self._client.aclose()


class Webhook:
    def __init__(self, url: str, *, token: str | None = None, timeout: float = 5.0) -> None:
        self.url = url
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.AsyncClient(timeout=timeout, headers=headers)

    async def post(self, event_json: str) -> None:
        try:
            r = await self._client.post(self.url, content=event_json.encode())
        except httpx.HTTPError as exc:
            raise DeliveryError(f"webhook {self.url}: {type(exc).__name__}") from None
        if r.status_code >= 300:
            raise DeliveryError(f"webhook {self.url} answered {r.status_code}")

    async def close(self) -> None:
        await self._client.aclose()


def resend_until(now: datetime, resend: float) -> datetime:
    return now + timedelta(seconds=4 * resend)


def parse(body: str | dict[str, Any]) -> dict[str, Any]:
    """An `alert_events.body` as asyncpg returns jsonb (text)."""
    return body if isinstance(body, dict) else dict(json.loads(body))
