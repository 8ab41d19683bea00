"""Dependencies of the routes: the registry's resources, the caller's session, permissions.

A route states what it needs in its signature, e.g. `pool: PoolDep, keyring: KeyringDep,
user: Annotated[CurrentUser, require(Permission.SERVERS_MANAGE)]`; `Requires` is the only
place a route's permission is checked (by `registry.accounts.authorize`, against
`registry.permissions.ROLE_PERMISSIONS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from registry import accounts
from registry.accounts import Session
from registry.crypto import Keyring
from registry.errors import Unauthenticated
from registry.models import Message, ValidationProblem
from registry.permissions import Permission
from registry.security import Passwords
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


def get_pool(registry: RegistryDep) -> asyncpg.Pool:
    return registry.pool


def get_keyring(registry: RegistryDep) -> Keyring:
    return registry.keyring


def get_passwords(registry: RegistryDep) -> Passwords:
    return registry.passwords


def get_settings(registry: RegistryDep) -> RegistrySettings:
    return registry.settings


PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
KeyringDep = Annotated[Keyring, Depends(get_keyring)]
PasswordsDep = Annotated[Passwords, Depends(get_passwords)]
SettingsDep = Annotated[RegistrySettings, Depends(get_settings)]

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


async def get_session(
    pool: PoolDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Session:
    if credentials is None:
        raise Unauthenticated("not authenticated: send Authorization: Bearer <token>")
    return await accounts.session(pool, credentials.credentials)


SessionDep = Annotated[Session, Depends(get_session)]


class Requires:
    """The dependency that admits a caller whose role holds `permission`."""

    def __init__(self, permission: Permission) -> None:
        self.permission = permission

    async def __call__(self, session: SessionDep) -> CurrentUser:
        return accounts.authorize(session.user, self.permission)

    def __repr__(self) -> str:
        return f"Requires({self.permission.value})"


def require(permission: Permission) -> Any:
    """`Annotated[CurrentUser, require(Permission.X)]`: the route needs permission X."""
    return Depends(Requires(permission))
