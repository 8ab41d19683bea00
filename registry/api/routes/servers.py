"""The server inventory: everyone reads it, admins change it. The SSH password is write-only:
encrypted before it reaches the database and never returned."""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, HTTPException, Response, status

from registry import store
from registry.api.deps import AUTHENTICATED, CONFLICT, NOT_FOUND, Limit, RegistryDep, Skip, require
from registry.models import ServerCreate, ServerPublic, ServersPublic, ServerUpdate
from registry.permissions import Permission
from registry.store import CurrentUser

router = APIRouter(prefix="/servers", tags=["servers"], responses=AUTHENTICATED)

_NOT_NULL = ("name", "hostname", "port", "username", "server_type", "server_category")


def _public(row: asyncpg.Record) -> ServerPublic:
    return ServerPublic.model_validate(dict(row))


def not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail="server not found")


def _columns(values: dict[str, Any]) -> dict[str, Any]:
    """Model fields → column values (enums and addresses as text)."""
    out = {}
    for key, value in values.items():
        if key in _NOT_NULL and value is None:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"{key}: may not be null"
            )
        out[key] = None if value is None else value if isinstance(value, int) else str(value)
    return out


@router.get("", response_model=ServersPublic)
async def list_servers(
    registry: RegistryDep,
    _user: Annotated[CurrentUser, require(Permission.SERVERS_READ)],
    skip: Skip = 0,
    limit: Limit = 100,
) -> ServersPublic:
    rows, count = await store.list_servers(registry.pool, skip, limit)
    return ServersPublic(data=[_public(r) for r in rows], count=count)


@router.post(
    "",
    response_model=ServerPublic,
    status_code=status.HTTP_201_CREATED,
    responses=CONFLICT,
)
async def create_server(
    body: ServerCreate,
    registry: RegistryDep,
    _user: Annotated[CurrentUser, require(Permission.SERVERS_MANAGE)],
) -> ServerPublic:
    """Register a server (409 if the hostname or id exists)."""
    server_id = str(body.id or uuid.uuid4())
    values = _columns(body.model_dump(exclude={"id", "password"}))
    values["id"] = server_id
    values["encrypted_password"] = registry.keyring.encrypt(
        body.password.get_secret_value(), server_id
    )
    return _public(await store.create_server(registry.pool, values))


@router.get("/{server_id}", response_model=ServerPublic, responses=NOT_FOUND)
async def read_server(
    server_id: UUID,
    registry: RegistryDep,
    _user: Annotated[CurrentUser, require(Permission.SERVERS_READ)],
) -> ServerPublic:
    row = await store.get_server(registry.pool, str(server_id))
    if row is None:
        raise not_found()
    return _public(row)


@router.patch("/{server_id}", response_model=ServerPublic, responses={**NOT_FOUND, **CONFLICT})
async def update_server(
    server_id: UUID,
    body: ServerUpdate,
    registry: RegistryDep,
    _user: Annotated[CurrentUser, require(Permission.SERVERS_MANAGE)],
) -> ServerPublic:
    changes = _columns(body.model_dump(exclude_unset=True, exclude={"password"}))
    if body.password is not None:
        changes["encrypted_password"] = registry.keyring.encrypt(
            body.password.get_secret_value(), str(server_id)
        )
    row = await store.update_server(registry.pool, str(server_id), changes)
    if row is None:
        raise not_found()
    return _public(row)


@router.delete("/{server_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_server(
    server_id: UUID,
    registry: RegistryDep,
    _user: Annotated[CurrentUser, require(Permission.SERVERS_MANAGE)],
) -> Response:
    """Remove a server and its stored metrics."""
    if not await store.delete_server(registry.pool, str(server_id)):
        raise not_found()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
