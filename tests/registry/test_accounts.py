"""Integration: the account rules of `registry.accounts`, called directly on a migrated database
of each test's own in the real PostgreSQL (no HTTP)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from infra.settings import StackSettings
from registry import accounts
from registry.errors import (
    Conflict,
    Forbidden,
    Invalid,
    LockedOut,
    NotFound,
    Unauthenticated,
    WrongPassword,
)
from registry.models import LoginRequest, UpdatePassword, UserCreate, UserPublic, UserUpdate
from registry.permissions import Permission, Role
from registry.security import Passwords
from registry.settings import RegistrySettings
from registry.store import CurrentUser
from tests.factories import registry_settings
from tests.registry.harness import refused

pytestmark = pytest.mark.integration

NEW_PASSWORD = "brand-new-pw"


def _body(**overrides: Any) -> UserCreate:
    values: dict[str, Any] = {
        "email": f"u-{uuid.uuid4().hex[:8]}@example.com",
        "name": "Ada",
        "password": SecretStr(f"pw-{uuid.uuid4().hex}"),
    }
    values.update(overrides)
    return UserCreate(**values)


def _caller(user: UserPublic) -> CurrentUser:
    return CurrentUser(user.id, user.email, user.role)


@dataclass
class Accounts:
    """`registry.accounts` on the test's database, and what the tests read back."""

    conn: asyncpg.Connection
    passwords: Passwords
    settings: RegistrySettings

    async def user(self, role: Role = Role.USER) -> tuple[UserPublic, str]:
        """A new user of `role`, and its password."""
        body = _body(role=role)
        user = await accounts.create_user(self.conn, self.passwords, body)
        return user, body.password.get_secret_value()

    async def admin(self) -> CurrentUser:
        return _caller((await self.user(Role.ADMIN))[0])

    async def update(self, caller: CurrentUser, user_id: str, **changes: Any) -> UserPublic:
        return await accounts.update_user(
            self.conn, self.passwords, caller, user_id, UserUpdate(**changes)
        )

    async def login(self, email: str, password: str) -> str:
        body = LoginRequest(email=email, password=SecretStr(password))
        return (await accounts.login(self.conn, self.passwords, self.settings, body)).access_token

    async def stored(self, user_id: str) -> asyncpg.Record:
        row = await self.conn.fetchrow(
            "SELECT password_hash, role::text AS role, active, last_login_at FROM users "
            "WHERE id = $1",
            user_id,
        )
        assert row is not None
        return row

    async def sessions(self, user_id: str) -> int:
        count: int = await self.conn.fetchval(
            "SELECT count(*) FROM sessions WHERE user_id = $1", user_id
        )
        return count

    async def refuse_deletes(self, table: str) -> None:
        """Make PostgreSQL itself fail every DELETE on `table` (in this test's database)."""
        await self.conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
        )
        await self.conn.execute(
            f"CREATE TRIGGER refuse BEFORE DELETE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION refuse()"
        )


@pytest.fixture
def env(
    registry_conn: asyncpg.Connection,
    passwords: Passwords,
    stack_settings: StackSettings,
    fresh_database: str,
) -> Accounts:
    return Accounts(registry_conn, passwords, registry_settings(stack_settings, fresh_database))


async def test_a_password_is_stored_as_its_argon2id_hash(env: Accounts) -> None:
    body = _body(email="Ada@Example.COM")
    user = await accounts.create_user(env.conn, env.passwords, body)
    assert user.email == "ada@example.com" and user.role is Role.USER and user.active
    assert not {"password", "password_hash"} & set(user.model_dump())
    stored = (await env.stored(user.id))["password_hash"]
    plain = body.password.get_secret_value()
    assert stored.startswith("$argon2id$") and plain not in stored
    assert await env.passwords.verify(stored, plain)
    everything = await env.conn.fetch("SELECT * FROM users")
    assert plain not in repr([dict(r) for r in everything])


async def test_a_duplicate_email_is_a_conflict_and_adds_no_row(env: Accounts) -> None:
    first, _ = await env.user()
    again = _body(email=first.email.upper())
    with refused(Conflict, "email: a user with this e-mail exists"):  # no value echoed
        await accounts.create_user(env.conn, env.passwords, again)
    assert await env.conn.fetchval("SELECT count(*) FROM users") == 1
    other, _ = await env.user()
    with refused(Conflict, "email: a user with this e-mail exists"):
        await env.update(_caller(first), other.id, email=first.email)
    assert await accounts.get_user(env.conn, other.id) == other


async def test_unknown_ids_are_not_found(env: Accounts) -> None:
    admin = await env.admin()
    unknown = str(uuid.uuid4())
    with refused(NotFound, "user not found"):
        await accounts.get_user(env.conn, unknown)
    for changes in ({"name": "x"}, {}):
        with refused(NotFound, "user not found"):
            await env.update(admin, unknown, **changes)
    with refused(NotFound, "user not found"):
        await accounts.delete_user(env.conn, admin, unknown)


async def test_an_admin_cannot_demote_deactivate_or_delete_themselves(env: Accounts) -> None:
    me = await env.admin()
    for changes in ({"role": Role.USER}, {"active": False}):
        with refused(Conflict, "an admin cannot deactivate or demote themselves"):
            await env.update(me, me.id, **changes)
    with refused(Conflict, "an admin cannot delete themselves"):
        await accounts.delete_user(env.conn, me, me.id)
    stored = await env.stored(me.id)
    assert stored["role"] == "admin" and stored["active"] is True

    # Their own name they may change; another admin may demote them.
    renamed = await env.update(me, me.id, name="Renamed", role=Role.ADMIN)
    assert renamed.name == "Renamed" and renamed.role is Role.ADMIN
    demoted = await env.update(await env.admin(), me.id, role=Role.USER)
    assert demoted.role is Role.USER


def test_a_role_without_the_permission_is_forbidden() -> None:
    user = CurrentUser(str(uuid.uuid4()), "u@example.com", Role.USER)
    admin = CurrentUser(str(uuid.uuid4()), "a@example.com", Role.ADMIN)
    with refused(Forbidden, "forbidden: needs permission users:manage"):
        accounts.authorize(user, Permission.USERS_MANAGE)
    assert accounts.authorize(user, Permission.SERVERS_READ) is user
    assert accounts.authorize(admin, Permission.USERS_MANAGE) is admin


async def test_null_for_a_field_that_needs_a_value_is_invalid(env: Accounts) -> None:
    admin = await env.admin()
    user, _ = await env.user()
    for field in ("email", "name", "role", "active"):
        with refused(Invalid, f"{field}: may not be null"):
            await env.update(admin, user.id, **{field: None})
    assert await accounts.get_user(env.conn, user.id) == user


async def test_a_new_password_or_deactivation_ends_every_session(env: Accounts) -> None:
    admin = await env.admin()
    user, password = await env.user()
    tokens = [await env.login(user.email, password) for _ in range(2)]
    assert (await accounts.session(env.conn, tokens[0])).user.id == user.id
    await env.update(admin, user.id, password=NEW_PASSWORD)
    for token in tokens:
        with refused(Unauthenticated, "invalid or expired token"):
            await accounts.session(env.conn, token)
    assert await env.passwords.verify((await env.stored(user.id))["password_hash"], NEW_PASSWORD)

    token = await env.login(user.email, NEW_PASSWORD)
    await env.update(admin, user.id, active=False)
    assert await env.sessions(user.id) == 0
    with pytest.raises(Unauthenticated):
        await accounts.session(env.conn, token)
    with pytest.raises(Unauthenticated):
        await env.login(user.email, NEW_PASSWORD)


async def test_a_failed_step_of_an_update_leaves_the_user_as_it_was(env: Accounts) -> None:
    admin = await env.admin()
    user, password = await env.user()
    token = await env.login(user.email, password)
    before = await env.stored(user.id)
    # The new hash is written first; ending the sessions, the second step, fails.
    await env.refuse_deletes("sessions")
    with pytest.raises(asyncpg.RaiseError, match="refused by the test"):
        await env.update(admin, user.id, password=NEW_PASSWORD)
    assert await env.stored(user.id) == before
    assert (await accounts.session(env.conn, token)).user.id == user.id


async def test_a_failed_step_of_a_login_leaves_no_session(env: Accounts) -> None:
    user, password = await env.user()
    await env.conn.execute(
        "INSERT INTO login_failures (email, failures, first_failed_at) VALUES ($1, 2, now())",
        user.email,
    )
    # Session, login time and rehash are written; clearing the failure count then fails.
    await env.refuse_deletes("login_failures")
    with pytest.raises(asyncpg.RaiseError, match="refused by the test"):
        await env.login(user.email, password)
    assert await env.sessions(user.id) == 0
    assert (await env.stored(user.id))["last_login_at"] is None
    failures = await env.conn.fetchval(
        "SELECT failures FROM login_failures WHERE email = $1", user.email
    )
    assert failures == 2


async def test_login_logout_and_lockout(env: Accounts) -> None:
    user, password = await env.user()
    token = await env.login(user.email.upper(), password)
    session = await accounts.session(env.conn, token)
    assert session.user == CurrentUser(user.id, user.email, Role.USER)
    assert await env.sessions(user.id) == 1
    kept = await env.conn.fetchval("SELECT token_hash FROM sessions WHERE user_id = $1", user.id)
    assert bytes(kept) == session.token_hash != token.encode()  # only the token's hash is kept
    assert (await env.stored(user.id))["last_login_at"] is not None
    await accounts.logout(env.conn, session)
    with pytest.raises(Unauthenticated):
        await accounts.session(env.conn, token)

    for _ in range(env.settings.login_max_failures):
        with refused(Unauthenticated, "wrong e-mail or password, or the account is deactivated"):
            await env.login(user.email, "wrong-one")
    with pytest.raises(LockedOut) as locked:
        await env.login(user.email, password)
    assert 0 < locked.value.retry_after <= env.settings.login_lockout + 1
    assert password not in str(locked.value)


async def test_a_user_changes_their_password_given_the_current_one(env: Accounts) -> None:
    user, password = await env.user()
    token = await env.login(user.email, password)
    me = _caller(user)
    wrong = UpdatePassword(current_password="not-it", new_password=NEW_PASSWORD)
    with refused(WrongPassword, "current_password: not the current password"):
        await accounts.change_password(env.conn, env.passwords, me, wrong)
    assert await env.passwords.verify((await env.stored(user.id))["password_hash"], password)

    right = UpdatePassword(current_password=password, new_password=NEW_PASSWORD)
    await accounts.change_password(env.conn, env.passwords, me, right)
    stored = (await env.stored(user.id))["password_hash"]
    assert await env.passwords.verify(stored, NEW_PASSWORD) and NEW_PASSWORD not in stored
    with pytest.raises(Unauthenticated):
        await accounts.session(env.conn, token)


async def test_users_are_listed_in_creation_order_with_their_count(env: Accounts) -> None:
    made = [(await env.user())[0] for _ in range(3)]
    page = await accounts.list_users(env.conn, 1, 1)
    assert page.count == 3 and page.data == [made[1]]
    await accounts.delete_user(env.conn, _caller(made[0]), made[2].id)
    assert (await accounts.list_users(env.conn, 0, 10)).data == made[:2]
