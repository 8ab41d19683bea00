"""Users: admins manage them; everyone may see their own account. The rules are
`registry.accounts`'; its refusals become answers in `registry.app`."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Response, status

from registry import accounts
from registry.api.deps import (
    AUTHENTICATED,
    BAD_REQUEST,
    CONFLICT,
    NOT_FOUND,
    Limit,
    PasswordsDep,
    PoolDep,
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
from registry.permissions import Permission
from registry.store import CurrentUser

router = APIRouter(prefix="/users", tags=["users"], responses=AUTHENTICATED)


@router.get("/me", response_model=UserPublic)
async def read_me(
    pool: PoolDep, user: Annotated[CurrentUser, require(Permission.SELF)]
) -> UserPublic:
    """The caller's own account."""
    return await accounts.get_user(pool, user.id)


@router.patch("/me/password", response_model=Message, responses=BAD_REQUEST)
async def update_my_password(
    body: UpdatePassword,
    pool: PoolDep,
    passwords: PasswordsDep,
    user: Annotated[CurrentUser, require(Permission.SELF)],
) -> Message:
    """Change one's own password; every session of the account ends (log in again)."""
    await accounts.change_password(pool, passwords, user, body)
    return Message(detail="password changed; every session ended, log in again")


@router.get("", response_model=UsersPublic)
async def list_users(
    pool: PoolDep,
    _user: Annotated[CurrentUser, require(Permission.USERS_MANAGE)],
    skip: Skip = 0,
    limit: Limit = 100,
) -> UsersPublic:
    return await accounts.list_users(pool, skip, limit)


@router.post(
    "",
    response_model=UserPublic,
    status_code=status.HTTP_201_CREATED,
    responses=CONFLICT,
)
async def create_user(
    body: UserCreate,
    pool: PoolDep,
    passwords: PasswordsDep,
    _user: Annotated[CurrentUser, require(Permission.USERS_MANAGE)],
) -> UserPublic:
    """Create a user (409 if the e-mail exists)."""
    return await accounts.create_user(pool, passwords, body)


@router.get("/{user_id}", response_model=UserPublic, responses=NOT_FOUND)
async def read_user(
    user_id: UUID,
    pool: PoolDep,
    _user: Annotated[CurrentUser, require(Permission.USERS_MANAGE)],
) -> UserPublic:
    return await accounts.get_user(pool, str(user_id))


@router.patch("/{user_id}", response_model=UserPublic, responses={**NOT_FOUND, **CONFLICT})
async def update_user(
    user_id: UUID,
    body: UserUpdate,
    pool: PoolDep,
    passwords: PasswordsDep,
    user: Annotated[CurrentUser, require(Permission.USERS_MANAGE)],
) -> UserPublic:
    """Change a user. `active: false` ends their sessions, as does a new password."""
    return await accounts.update_user(pool, passwords, user, str(user_id), body)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, **CONFLICT},
)
async def delete_user(
    user_id: UUID,
    pool: PoolDep,
    user: Annotated[CurrentUser, require(Permission.USERS_MANAGE)],
) -> Response:
    await accounts.delete_user(pool, user, str(user_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
