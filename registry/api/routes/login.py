"""Logging in and out: opaque bearer tokens, stored as hashes, with expiry and lockout."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Response, status

from registry import store
from registry.api.deps import AUTHENTICATED, RegistryDep, SessionDep, require, unauthorized
from registry.models import LoginRequest, Message, Token, ValidationProblem
from registry.permissions import Permission
from registry.security import new_token, token_hash
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
async def login(body: LoginRequest, registry: RegistryDep) -> Token:
    """Log in with e-mail and password; returns a bearer token (public route)."""
    s = registry.settings
    email = body.email.lower()
    locked = await store.locked_for(registry.pool, email)
    if locked > 0:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail="too many failed logins for this e-mail; try again later",
            headers={"Retry-After": str(int(locked) + 1)},
        )
    record = await store.login_record(registry.pool, email)
    password = body.password.get_secret_value()
    # Verified even for an unknown e-mail (against a dummy hash): the same cost either way.
    ok = await registry.passwords.verify(record["password_hash"] if record else None, password)
    if not ok or record is None or not record["active"]:
        await store.record_failure(
            registry.pool,
            email,
            max_failures=s.login_max_failures,
            window=s.login_window,
            lockout=s.login_lockout,
        )
        raise unauthorized("wrong e-mail or password, or the account is deactivated")
    new_hash = None
    if registry.passwords.needs_rehash(record["password_hash"]):
        new_hash = await registry.passwords.hash(password)
    token = new_token()
    async with registry.pool.acquire() as conn:
        expires = await store.start_session(
            conn, record["id"], token_hash(token), timedelta(hours=s.session_hours), new_hash
        )
    await store.clear_failures(registry.pool, email)
    return Token(access_token=token, expires_at=expires)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=AUTHENTICATED)
async def logout(
    registry: RegistryDep,
    session: SessionDep,
    _user: Annotated[CurrentUser, require(Permission.SELF)],
) -> Response:
    """End this session: the token stops working at once."""
    await store.end_session(registry.pool, session.token_hash)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
