"""Accounts: users, their passwords and sessions, and what each role may do.

Every operation takes the pool or a connection and plain values or the API's models, and
refuses with an error of `registry.errors`: `Invalid`, `NotFound`, `Conflict` (a duplicate
e-mail; an admin deactivating, demoting or deleting themselves), `Forbidden`,
`Unauthenticated`, `WrongPassword` or `LockedOut`. A password reaches the database only as an
Argon2id hash (`registry.security`). An operation of several statements runs in one
transaction: it lands whole or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg

from registry import store
from registry.errors import Conflict, Forbidden, LockedOut, NotFound, Unauthenticated, WrongPassword
from registry.models import (
    LoginRequest,
    Token,
    UpdatePassword,
    UserCreate,
    UserPublic,
    UsersPublic,
    UserUpdate,
)
from registry.permissions import Permission, Role, allowed
from registry.security import Passwords, new_token, token_hash
from registry.settings import RegistrySettings
from registry.store import Conn, CurrentUser


@dataclass(frozen=True)
class Session:
    """A logged-in caller: who, and the hash of the token they sent."""

    user: CurrentUser
    token_hash: bytes


def _public(row: asyncpg.Record) -> UserPublic:
    return UserPublic.model_validate(dict(row))


def authorize(user: CurrentUser, permission: Permission) -> CurrentUser:
    """`user` when their role holds `permission`; `Forbidden` otherwise."""
    if not allowed(user.role, permission):
        raise Forbidden(f"forbidden: needs permission {permission.value}")
    return user


# -- users ----------------------------------------------------------------------------------------
async def create_user(conn: Conn, passwords: Passwords, body: UserCreate) -> UserPublic:
    """A new user; `Conflict` when the e-mail (compared lower-case) exists."""
    password_hash = await passwords.hash(body.password.get_secret_value())
    row = await store.create_user(
        conn,
        email=body.email,
        name=body.name,
        password_hash=password_hash,
        role=body.role,
        active=body.active,
    )
    return _public(row)


async def get_user(conn: Conn, user_id: str) -> UserPublic:
    return _public(store.found(await store.get_user(conn, user_id), "user"))


async def list_users(conn: Conn, skip: int, limit: int) -> UsersPublic:
    rows, count = await store.list_users(conn, skip, limit)
    return UsersPublic(data=[_public(r) for r in rows], count=count)


async def _apply(conn: Conn, user_id: str, changes: dict[str, Any]) -> asyncpg.Record:
    async with store.transaction(conn) as held:
        row = store.found(await store.update_user(held, user_id, changes), "user")
        # A deactivated account or a new password leaves no session open.
        if changes.get("active") is False or "password_hash" in changes:
            await store.end_sessions(held, user_id)
    return row


async def update_user(
    conn: Conn, passwords: Passwords, caller: CurrentUser, user_id: str, body: UserUpdate
) -> UserPublic:
    """Apply the fields sent. `active: false` or a new password ends the user's sessions, in
    the same transaction. `Conflict` when the caller would deactivate or demote themselves
    (the registry would be left without its admin) or the new e-mail exists."""
    if user_id == caller.id and (body.active is False or body.role not in (None, Role.ADMIN)):
        raise Conflict("an admin cannot deactivate or demote themselves")
    changes = body.changes()
    if body.password is not None:
        changes["password_hash"] = await passwords.hash(body.password.get_secret_value())
    return _public(await _apply(conn, user_id, changes))


async def delete_user(conn: Conn, caller: CurrentUser, user_id: str) -> None:
    """Remove a user and their sessions; `Conflict` for the caller's own account."""
    if user_id == caller.id:
        raise Conflict("an admin cannot delete themselves")
    if not await store.delete_user(conn, user_id):
        raise NotFound("user not found")


async def change_password(
    conn: Conn, passwords: Passwords, user: CurrentUser, body: UpdatePassword
) -> None:
    """The user's new password, given the current one (`WrongPassword` otherwise); every
    session of the account ends with it."""
    record = await store.login_record(conn, user.email)
    current = body.current_password.get_secret_value()
    if record is None or not await passwords.verify(record["password_hash"], current):
        raise WrongPassword("current_password: not the current password")
    new_hash = await passwords.hash(body.new_password.get_secret_value())
    await _apply(conn, user.id, {"password_hash": new_hash})


# -- login and sessions ---------------------------------------------------------------------------
async def login(
    conn: Conn, passwords: Passwords, settings: RegistrySettings, body: LoginRequest
) -> Token:
    """A new session for e-mail and password.

    `LockedOut` while the e-mail is locked; `Unauthenticated` for a wrong e-mail or password or
    a deactivated account, counted as a failure (the `login_max_failures`-th within
    `login_window` locks the e-mail for `login_lockout`). On success the session, the login
    time, a rehash under the current parameters and the cleared failure count land together.
    """
    email = body.email.lower()
    locked = await store.locked_for(conn, email)
    if locked > 0:
        raise LockedOut("too many failed logins for this e-mail; try again later", int(locked) + 1)
    record = await store.login_record(conn, email)
    password = body.password.get_secret_value()
    # Verified even for an unknown e-mail (against a dummy hash): the same cost either way.
    ok = await passwords.verify(record["password_hash"] if record else None, password)
    if not ok or record is None or not record["active"]:
        await store.record_failure(
            conn,
            email,
            max_failures=settings.login_max_failures,
            window=settings.login_window,
            lockout=settings.login_lockout,
        )
        raise Unauthenticated("wrong e-mail or password, or the account is deactivated")
    new_hash = None
    if passwords.needs_rehash(record["password_hash"]):
        new_hash = await passwords.hash(password)
    token = new_token()
    ttl = timedelta(hours=settings.session_hours)
    async with store.transaction(conn) as held:
        expires = await store.start_session(held, record["id"], token_hash(token), ttl, new_hash)
        await store.clear_failures(held, email)
    return Token(access_token=token, expires_at=expires)


async def session(conn: Conn, token: str) -> Session:
    """The session a bearer token opens; `Unauthenticated` when unknown, expired or the
    account is deactivated."""
    digest = token_hash(token)
    user = await store.session_user(conn, digest)
    if user is None:
        raise Unauthenticated("invalid or expired token")
    return Session(user, digest)


async def logout(conn: Conn, session: Session) -> None:
    """End the session: its token stops working at once."""
    await store.end_session(conn, session.token_hash)
