"""The server inventory: everyone reads it, admins change it. The SSH password is write-only
(`registry.inventory` encrypts it; no response carries it)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Response, status

from registry import inventory
from registry.api.deps import (
    AUTHENTICATED,
    CONFLICT,
    NOT_FOUND,
    KeyringDep,
    Limit,
    PoolDep,
    Skip,
    require,
)
from registry.models import ServerCreate, ServerPublic, ServersPublic, ServerUpdate
from registry.permissions import Permission
from registry.store import CurrentUser

router = APIRouter(prefix="/servers", tags=["servers"], responses=AUTHENTICATED)


@router.get("", response_model=ServersPublic)
async def list_servers(
    pool: PoolDep,
    _user: Annotated[CurrentUser, require(Permission.SERVERS_READ)],
    skip: Skip = 0,
    limit: Limit = 100,
) -> ServersPublic:
    return await inventory.list_servers(pool, skip, limit)


@router.post(
    "",
    response_model=ServerPublic,
    status_code=status.HTTP_201_CREATED,
    responses=CONFLICT,
)
async def create_server(
    body: ServerCreate,
    pool: PoolDep,
    keyring: KeyringDep,
    _user: Annotated[CurrentUser, require(Permission.SERVERS_MANAGE)],
) -> ServerPublic:
    """Register a server (409 if the hostname or id exists)."""
    return await inventory.create_server(pool, keyring, body)


@router.get("/{server_id}", response_model=ServerPublic, responses=NOT_FOUND)
async def read_server(
    server_id: UUID,
    pool: PoolDep,
    _user: Annotated[CurrentUser, require(Permission.SERVERS_READ)],
) -> ServerPublic:
    return await inventory.get_server(pool, str(server_id))


@router.patch("/{server_id}", response_model=ServerPublic, responses={**NOT_FOUND, **CONFLICT})
async def update_server(
    server_id: UUID,
    body: ServerUpdate,
    pool: PoolDep,
    keyring: KeyringDep,
    _user: Annotated[CurrentUser, require(Permission.SERVERS_MANAGE)],
) -> ServerPublic:
    return await inventory.update_server(pool, keyring, str(server_id), body)


@router.delete("/{server_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_server(
    server_id: UUID,
    pool: PoolDep,
    _user: Annotated[CurrentUser, require(Permission.SERVERS_MANAGE)],
) -> Response:
    """Remove a server and its stored metrics."""
    await inventory.delete_server(pool, str(server_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
