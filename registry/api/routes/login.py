"""Logging in and out: opaque bearer tokens, stored as hashes, with expiry and lockout (the
rules are `registry.accounts`')."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response, status

from registry import accounts
from registry.api.deps import (
    AUTHENTICATED,
    PasswordsDep,
    PoolDep,
    SessionDep,
    SettingsDep,
    require,
)
from registry.models import LoginRequest, Message, Token, ValidationProblem
from registry.permissions import Permission
from registry.store import CurrentUser

router = APIRouter(tags=["login"])


@router.post(
    "/login",
    response_model=Token,
    responses={
        400: {"model": Message},
        401: {"model": Message},
        422: {"model": ValidationProblem},
        429: {"model": Message},
    },
)
async def login(
    body: LoginRequest, pool: PoolDep, passwords: PasswordsDep, settings: SettingsDep
) -> Token:
    """Log in with e-mail and password; returns a bearer token (public route)."""
    return await accounts.login(pool, passwords, settings, body)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=AUTHENTICATED)
async def logout(
    pool: PoolDep,
    session: SessionDep,
    _user: Annotated[CurrentUser, require(Permission.SELF)],
) -> Response:
    """End this session: the token stops working at once."""
    await accounts.logout(pool, session)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
