"""A server's metric series, read through the sinks' read path (bounded in points)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, cast
from uuid import UUID

import asyncpg
from fastapi import APIRouter, HTTPException, Query, status

from registry import store
from registry.api.deps import AUTHENTICATED, BAD_REQUEST, NOT_FOUND, RegistryDep, require
from registry.api.routes.servers import not_found
from registry.models import EARLIEST, LATEST, MetricSeries
from registry.permissions import Permission
from registry.store import CurrentUser
from sinks.read import ReadError, read_series

router = APIRouter(prefix="/servers", tags=["metrics"], responses=AUTHENTICATED)


def _check_time(name: str, value: datetime) -> None:
    if value.tzinfo is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"{name}: needs a time zone (e.g. 2026-11-25T10:00:00Z)",
        )
    if not EARLIEST <= value <= LATEST:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"{name}: must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}",
        )


@router.get(
    "/{server_id}/metrics",
    response_model=MetricSeries,
    response_model_by_alias=True,
    responses={**BAD_REQUEST, **NOT_FOUND},
)
async def read_metrics(
    server_id: UUID,
    registry: RegistryDep,
    _user: Annotated[CurrentUser, require(Permission.METRICS_READ)],
    start: Annotated[
        datetime | None,
        Query(
            alias="from",
            description="Start, inclusive (ISO 8601 with offset); default: to minus 1 h.",
        ),
    ] = None,
    end: Annotated[
        datetime | None,
        Query(alias="to", description="End, exclusive (ISO 8601 with offset); default now."),
    ] = None,
    step: Annotated[
        Literal["1m", "5m", "1h", "1d"], Query(description="Bucket size of the series.")
    ] = "1m",
) -> MetricSeries:
    """One point per step in [from, to), empty buckets included; at most `max_points`."""
    end = end or datetime.now(UTC)
    _check_time("to", end)
    start = start or end - timedelta(hours=1)
    _check_time("from", start)
    if not await store.server_exists(registry.pool, str(server_id)):
        raise not_found()
    try:
        async with registry.pool.acquire() as conn:
            points = await read_series(
                cast(asyncpg.Connection, conn),
                str(server_id),
                start,
                end,
                step,
                max_points=registry.settings.max_points,
            )
    except ReadError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    return MetricSeries(
        server_id=str(server_id),
        step=step,
        start=start,
        end=end,
        points=points,
    )
