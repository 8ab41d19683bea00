"""Health (public): the database round trip, and the status consumer's dependencies in the
common /health shape (`runtime/telemetry.py`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from registry.api.deps import RegistryDep
from registry.status import TELEMETRY

router = APIRouter(tags=["health"])


@router.get("/health")
async def read_health(registry: RegistryDep) -> dict[str, Any]:
    """Public: 200 when the database answers (503 when it does not). `status` is `ok`, or
    `degraded` while the status consumer cannot reach Kafka: the API still serves, but
    `is_online` is not kept current meanwhile."""
    await registry.pool.fetchval("SELECT 1")
    healthy, body = TELEMETRY.health()
    body["dependencies"]["postgres"] = "up"
    body["status"] = "ok" if healthy else "degraded"
    return body
