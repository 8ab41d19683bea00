"""Dependencies of the routes: the registry's resources, the caller's session, permissions.

A route states what it needs in its signature, e.g.
`user: Annotated[CurrentUser, require(Permission.SERVERS_MANAGE)]`; `Requires` is the only
place a permission is checked, against `registry.permissions.ROLE_PERMISSIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from registry import store
from registry.crypto import Keyring
from registry.models import Message, ValidationProblem
from registry.permissions import Permission, allowed
from registry.security import Passwords, token_hash
from registry.settings import RegistrySettings
from registry.store import CurrentUser


@dataclass
class Registry:
    """What the routes share, built by the app's lifespan."""

    settings: RegistrySettings
    pool: asyncpg.Pool
    keyring: Keyring
    passwords: Passwords


def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


RegistryDep = Annotated[Registry, Depends(get_registry)]

Skip = Annotated[int, Query(ge=0, le=1_000_000, description="Rows to skip.")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Most rows returned.")]

Responses = dict[int | str, dict[str, Any]]
BAD_REQUEST: Responses = {400: {"model": Message}}
NOT_FOUND: Responses = {404: {"model": Message}}
CONFLICT: Responses = {409: {"model": Message}}
#: Every route behind a login: no or a bad token (401), a role without the permission (403),
#: bad input (400, 422).
AUTHENTICATED: Responses = {
    400: {"model": Message},  # a body that is not UTF-8 JSON
    401: {"model": Message},
    403: {"model": Message},
    422: {"model": ValidationProblem},
}

_bearer = HTTPBearer(auto_error=False, description="The token from `POST /login`.")


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


@dataclass(frozen=True)
class Session:
    user: CurrentUser
    token_hash: bytes


async def get_session(
    registry: RegistryDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Session:
    if credentials is None:
        raise unauthorized("not authenticated: send Authorization: Bearer <token>")
    digest = token_hash(credentials.credentials)
    user = await store.session_user(registry.pool, digest)
    if user is None:
        raise unauthorized("invalid or expired token")
    return Session(user, digest)


SessionDep = Annotated[Session, Depends(get_session)]


class Requires:
    """The dependency that admits a caller whose role holds `permission`."""

    def __init__(self, permission: Permission) -> None:
        self.permission = permission

    async def __call__(self, session: SessionDep) -> CurrentUser:
        if not allowed(session.user.role, self.permission):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"forbidden: needs permission {self.permission.value}",
            )
        return session.user

    def __repr__(self) -> str:
        return f"Requires({self.permission.value})"


def require(permission: Permission) -> Any:
    """`Annotated[CurrentUser, require(Permission.X)]`: the route needs permission X."""
    return Depends(Requires(permission))
