"""Every router of the API, in one list (the app includes them; the RBAC test walks them)."""

from __future__ import annotations

from fastapi import APIRouter

from registry.api.routes import alerts, health, login, metrics, servers, users

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    login.router,
    users.router,
    servers.router,
    metrics.router,
    metrics.fleet_router,
    alerts.router,
)
