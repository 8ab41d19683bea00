"""Liveness with a database round trip (public)."""

from __future__ import annotations

from fastapi import APIRouter

from registry.api.deps import RegistryDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def read_health(registry: RegistryDep) -> dict[str, str]:
    """Public: 200 when the database answers."""
    await registry.pool.fetchval("SELECT 1")
    return {"status": "ok"}
