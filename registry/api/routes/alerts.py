"""Alert rules (admins write them, everyone reads them) and the alerts `fleetpulse alerts`
raised: those firing now and the history of firing and resolved events."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import BaseModel, Field

from alerts import store
from alerts.rules import RulePublic, RuleSpec
from registry.api.deps import AUTHENTICATED, NOT_FOUND, PoolDep, require
from registry.permissions import Permission
from registry.store import CurrentUser

router = APIRouter(prefix="/alerts", tags=["alerts"], responses=AUTHENTICATED)

RuleId = Annotated[int, Path(ge=1, le=2**62, description="The rule's id.")]


class AlertEvents(BaseModel):
    """A page of the history, newest first (each item an AlertEvent of `metrics.alerts.v1`)."""

    data: list[dict[str, Any]]
    next_before: int | None = Field(
        description="Pass as `before` for the next page; null on the last one."
    )


class FiringAlerts(BaseModel):
    data: list[dict[str, Any]] = Field(description="The latest firing event of each alert.")


@router.get("/rules", response_model=list[RulePublic])
async def list_rules(
    pool: PoolDep, _user: Annotated[CurrentUser, require(Permission.ALERTS_READ)]
) -> list[RulePublic]:
    return await store.list_rules(pool)


@router.post("/rules", response_model=RulePublic, status_code=status.HTTP_201_CREATED)
async def create_rule(
    body: RuleSpec,
    pool: PoolDep,
    _user: Annotated[CurrentUser, require(Permission.ALERTS_MANAGE)],
) -> RulePublic:
    """Create a rule; the evaluator judges it from the next windows on (within
    `FLEETPULSE_ALERTS_RULES_REFRESH`)."""
    return await store.create_rule(pool, body)


@router.get("/rules/{rule_id}", response_model=RulePublic, responses=NOT_FOUND)
async def read_rule(
    rule_id: RuleId, pool: PoolDep, _user: Annotated[CurrentUser, require(Permission.ALERTS_READ)]
) -> RulePublic:
    return await store.get_rule(pool, rule_id)


@router.put("/rules/{rule_id}", response_model=RulePublic, responses=NOT_FOUND)
async def replace_rule(
    rule_id: RuleId,
    body: RuleSpec,
    pool: PoolDep,
    _user: Annotated[CurrentUser, require(Permission.ALERTS_MANAGE)],
) -> RulePublic:
    """Replace a rule. Its alerts that fire are resolved at once (reason `rule_edited`, one
    resolved notification each), and the new definition is judged afresh from the next window:
    an alert that still holds fires again after the rule's `for_seconds`."""
    return await store.replace_rule(pool, rule_id, body)


@router.delete("/rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_rule(
    rule_id: RuleId, pool: PoolDep, _user: Annotated[CurrentUser, require(Permission.ALERTS_MANAGE)]
) -> Response:
    """Delete a rule; its firing alerts are resolved (reason `rule_deleted`)."""
    await store.delete_rule(pool, rule_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("", response_model=FiringAlerts)
async def firing_alerts(
    pool: PoolDep, _user: Annotated[CurrentUser, require(Permission.ALERTS_READ)]
) -> FiringAlerts:
    """The alerts firing now."""
    return FiringAlerts(data=await store.list_firing(pool))


@router.get("/history", response_model=AlertEvents)
async def alert_history(
    pool: PoolDep,
    _user: Annotated[CurrentUser, require(Permission.ALERTS_READ)],
    server_id: UUID | None = None,
    rule_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    state: Literal["firing", "resolved"] | None = None,
    before: Annotated[int | None, Query(ge=1, le=2**62, description="A `next_before`.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AlertEvents:
    """Firing and resolved events, newest first."""
    events = await store.list_events(
        pool,
        server_id=None if server_id is None else str(server_id),
        rule_id=rule_id,
        status=state,
        before=before,
        limit=limit,
    )
    return AlertEvents(
        data=[e.body for e in events],
        next_before=events[-1].seq if len(events) == limit else None,
    )
