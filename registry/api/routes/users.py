"""Users: admins manage them; everyone may see their own account."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, HTTPException, Response, status

from registry import store
from registry.api.deps import (
    AUTHENTICATED,
    BAD_REQUEST,
    CONFLICT,
    NOT_FOUND,
    Limit,
    Registry,
    RegistryDep,
    Skip,
    require,
)
from registry.models import (
    Message,
    UpdatePassword,
    UserCreate,
    UserPublic,
    UsersPublic,
    UserUpdate,
)
from registry.permissions import Permission, Role
from registry.store import CurrentUser

router = APIRouter(prefix="/users", tags=["users"], responses=AUTHENTICATED)


def _public(row: asyncpg.Record) -> UserPublic:
    return UserPublic.model_validate(dict(row))


def _not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail="user not found")


async def _read(registry: Registry, user_id: str) -> UserPublic:
    row = await store.get_user(registry.pool, user_id)
    if row is None:
        raise _not_found()
    return _public(row)


@router.get("/me", response_model=UserPublic)
async def read_me(
    registry: RegistryDep, user: Annotated[CurrentUser, require(Permission.SELF)]
) -> UserPublic:
    """The caller's own account."""
    return await _read(registry, user.id)


@router.patch("/me/password", response_model=Message, responses=BAD_REQUEST)
async def update_my_password(
    body: UpdatePassword,
    registry: RegistryDep,
    user: Annotated[CurrentUser, require(Permission.SELF)],
) -> Message:
    """Change one's own password; every session of the account ends (log in again)."""
    record = await store.login_record(registry.pool, user.email)
    current = body.current_password.get_secret_value()
    if record is None or not await registry.passwords.verify(record["password_hash"], current):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, detail="current_password: not the current password"
        )
    new_hash = await registry.passwords.hash(body.new_password.get_secret_value())
    async with registry.pool.acquire() as conn:
        await store.update_user(conn, user.id, {"password_hash": new_hash})
    return Message(detail="password changed; every session ended, log in again")


@router.get("", response_model=UsersPublic)
async def list_users(
    registry: RegistryDep,
    _user: Annotated[CurrentUser, require(Permission.USERS_MANAGE)],
    skip: Skip = 0,
    limit: Limit = 100,
) -> UsersPublic:
    rows, count = await store.list_users(registry.pool, skip, limit)
    return UsersPublic(data=[_public(r) for r in rows], count=count)


@router.post(
    "",
    response_model=UserPublic,
    status_code=status.HTTP_201_CREATED,
    responses=CONFLICT,
)
async def create_user(
    body: UserCreate,
    registry: RegistryDep,
    _user: Annotated[CurrentUser, require(Permission.USERS_MANAGE)],
) -> UserPublic:
    """Create a user (409 if the e-mail exists)."""
    password_hash = await registry.passwords.hash(body.password.get_secret_value())
    row = await store.create_user(
        registry.pool,
        email=body.email,
        name=body.name,
        password_hash=password_hash,
        role=body.role,
        active=body.active,
    )
    return _public(row)


@router.get("/{user_id}", response_model=UserPublic, responses=NOT_FOUND)
async def read_user(
    user_id: UUID,
    registry: RegistryDep,
    _user: Annotated[CurrentUser, require(Permission.USERS_MANAGE)],
) -> UserPublic:
    return await _read(registry, str(user_id))


@router.patch("/{user_id}", response_model=UserPublic, responses={**NOT_FOUND, **CONFLICT})
async def update_user(
    user_id: UUID,
    body: UserUpdate,
    registry: RegistryDep,
    user: Annotated[CurrentUser, require(Permission.USERS_MANAGE)],
) -> UserPublic:
    """Change a user. `active: false` ends their sessions, as does a new password."""
    if str(user_id) == user.id and (body.active is False or body.role not in (None, Role.ADMIN)):
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail="an admin cannot deactivate or demote themselves"
        )
    changes: dict[str, Any] = body.model_dump(exclude_unset=True, exclude={"password"})
    if body.password is not None:
        changes["password_hash"] = await registry.passwords.hash(body.password.get_secret_value())
    for key in ("email", "name", "role", "active"):
        if key in changes and changes[key] is None:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"{key}: may not be null"
            )
    if "role" in changes:
        changes["role"] = Role(changes["role"]).value
    async with registry.pool.acquire() as conn:
        row = await store.update_user(conn, str(user_id), changes)
    if row is None:
        raise _not_found()
    return _public(row)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, **CONFLICT},
)
async def delete_user(
    user_id: UUID,
    registry: RegistryDep,
    user: Annotated[CurrentUser, require(Permission.USERS_MANAGE)],
) -> Response:
    if str(user_id) == user.id:
        raise HTTPException(status.HTTP_409_CONFLICT, detail="an admin cannot delete themselves")
    if not await store.delete_user(registry.pool, str(user_id)):
        raise _not_found()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
