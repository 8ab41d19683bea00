"""A server's metric series, read through the sinks' read path (bounded in points)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Literal, cast
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import HTMLResponse

from registry import chart, inventory
from registry.api.deps import (
    AUTHENTICATED,
    BAD_REQUEST,
    NOT_FOUND,
    Registry,
    RegistryDep,
    require,
)
from registry.models import EARLIEST, LATEST, MetricSeries, ServerPublic
from registry.permissions import Permission
from registry.store import CurrentUser
from sinks.read import STEPS, ReadError, read_series

router = APIRouter(prefix="/servers", tags=["metrics"], responses=AUTHENTICATED)

# The steps the read path serves, as the query parameter's choices (a 422 for any other).
if TYPE_CHECKING:
    Step = str
else:
    Step = Literal[tuple(STEPS)]


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


@dataclass(frozen=True)
class SeriesQuery:
    start: datetime | None
    end: datetime | None
    step: str


def series_query(
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
    step: Annotated[Step, Query(description="Bucket size of the series.")] = "1m",
) -> SeriesQuery:
    """The range and step of a series request (`/metrics` and `/chart`)."""
    return SeriesQuery(start, end, step)


SeriesQueryDep = Annotated[SeriesQuery, Depends(series_query)]


async def _series(
    registry: Registry, server_id: UUID, query: SeriesQuery
) -> tuple[MetricSeries, ServerPublic]:
    """The series and the server's row; 404 for an unknown server, 400/422 for a bad range."""
    step = query.step
    end = query.end or datetime.now(UTC)
    _check_time("to", end)
    start = query.start or end - timedelta(hours=1)
    _check_time("from", start)
    server = await inventory.get_server(registry.pool, str(server_id))
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
    series = MetricSeries(server_id=str(server_id), step=step, start=start, end=end, points=points)
    return series, server


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
    query: SeriesQueryDep,
) -> MetricSeries:
    """One point per step in [from, to), empty buckets included; at most `max_points`."""
    series, _ = await _series(registry, server_id, query)
    return series


@router.get(
    "/{server_id}/chart",
    # Errors stay JSON like everywhere else; only the 200 is a page.
    response_model=None,
    responses={
        **BAD_REQUEST,
        **NOT_FOUND,
        200: {
            "description": "The page (HTML with inline SVG).",
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
    },
)
async def read_chart(
    server_id: UUID,
    registry: RegistryDep,
    _user: Annotated[CurrentUser, require(Permission.METRICS_READ)],
    query: SeriesQueryDep,
) -> HTMLResponse:
    """The same series as `/metrics`, drawn: a self-contained HTML page with inline SVG charts
    of CPU, memory, disk and network (nothing fetched from elsewhere). Authenticated like every
    route, with the bearer token in the header: save the page (`curl -o`) and open the file."""
    series, server = await _series(registry, server_id, query)
    # The page's own policy (its inline script and style by hash), never in a frame.
    policy = f"{chart.POLICY}; frame-ancestors 'none'"
    return HTMLResponse(
        chart.render_chart(series, server.name), headers={"Content-Security-Policy": policy}
    )
