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
from registry.models import EARLIEST, LATEST, MetricSeries, ServerPublic, StatSeries
from registry.permissions import Permission
from registry.store import CurrentUser
from sinks.fleet import STATS, StatPoint, read_fleet
from sinks.read import STEPS, ReadError, read_series

router = APIRouter(prefix="/servers", tags=["metrics"], responses=AUTHENTICATED)
fleet_router = APIRouter(prefix="/fleet", tags=["metrics"], responses=AUTHENTICATED)

# The steps the read path serves, and the statistics, as the query parameters' choices (a
# 422 for any other).
if TYPE_CHECKING:
    Step = str
    Stat = str
else:
    Step = Literal[tuple(STEPS)]
    Stat = Literal[tuple(STATS)]

_STAT_HELP = (
    "One statistic per metric and bucket instead of every one: avg (weighted by samples), "
    "min, max, or a percentile p50, p90, p95, p99 (within 1 % of the exact one; from the "
    "hourly and daily rollups, so for steps 1h and 1d)."
)


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


def _range(query: SeriesQuery) -> tuple[datetime, datetime]:
    """The request's [from, to), defaults filled in (the last hour), checked (422)."""
    end = query.end or datetime.now(UTC)
    _check_time("to", end)
    start = query.start or end - timedelta(hours=1)
    _check_time("from", start)
    return start, end


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
    start, end = _range(query)
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
    response_model=MetricSeries | StatSeries,
    response_model_by_alias=True,
    responses={**BAD_REQUEST, **NOT_FOUND},
)
async def read_metrics(
    server_id: UUID,
    registry: RegistryDep,
    _user: Annotated[CurrentUser, require(Permission.METRICS_READ)],
    query: SeriesQueryDep,
    stat: Annotated[Stat | None, Query(description=_STAT_HELP)] = None,
) -> MetricSeries | StatSeries:
    """One point per step in [from, to), empty buckets included; at most `max_points`. Each
    point has every statistic (with percentiles at steps 1h and 1d), or, with `stat`, that
    one of each metric."""
    if stat is not None:
        await inventory.get_server(registry.pool, str(server_id))  # a 404 if unknown
        points, start, end = await _stat_points(registry, query, stat, [str(server_id)])
        return StatSeries(
            server_id=str(server_id),
            step=query.step,
            stat=stat,
            start=start,
            end=end,
            points=points,
        )
    series, _ = await _series(registry, server_id, query)
    return series


async def _stat_points(
    registry: Registry, query: SeriesQuery, stat: str, servers: list[str] | None
) -> tuple[list[StatPoint], datetime, datetime]:
    start, end = _range(query)
    try:
        async with registry.pool.acquire() as conn:
            points = await read_fleet(
                cast(asyncpg.Connection, conn),
                start,
                end,
                query.step,
                stat,
                servers,
                max_points=registry.settings.max_points,
            )
    except ReadError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    return points, start, end


#: Most servers one fleet query may list (more: ask for all).
MAX_FLEET_SERVERS = 10_000


@fleet_router.get(
    "/metrics",
    response_model=StatSeries,
    response_model_by_alias=True,
    responses={**BAD_REQUEST},
)
async def read_fleet_metrics(
    registry: RegistryDep,
    _user: Annotated[CurrentUser, require(Permission.METRICS_READ)],
    query: SeriesQueryDep,
    stat: Annotated[Stat, Query(description=_STAT_HELP)],
    servers: Annotated[
        list[str] | None,
        Query(
            description="Server ids, repeated or comma-separated (default: every server).",
        ),
    ] = None,
) -> StatSeries:
    """One statistic of every metric per step in [from, to) across servers: the fleet's p99
    CPU per hour is one request (`stat=p99&step=1h`), merging every server's quantile sketch
    in the database."""
    ids: list[str] | None = None
    if servers:
        ids = []
        for part in (p.strip() for value in servers for p in value.split(",")):
            if not part:
                continue
            try:
                ids.append(str(UUID(part)))
            except ValueError:
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    detail=f"servers: {part[:40]!r} is not a server id (a UUID)",
                ) from None
        if len(ids) > MAX_FLEET_SERVERS:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=f"servers: {len(ids)} listed, at most {MAX_FLEET_SERVERS} "
                "(leave it out for every server)",
            )
    points, start, end = await _stat_points(registry, query, stat, ids)
    return StatSeries(servers=ids, step=query.step, stat=stat, start=start, end=end, points=points)


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
