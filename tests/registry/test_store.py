"""Integration: the registry's SQL helpers (`registry.store`), called directly on a migrated
database of each test's own in the real PostgreSQL (no HTTP, no rules of `registry.accounts`)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from asyncpg.pool import PoolConnectionProxy

from infra.settings import StackSettings
from registry import store
from registry.errors import Conflict, NotFound
from registry.permissions import Role
from registry.store import CurrentUser
from tests.factories import unique
from tests.registry.harness import refused

pytestmark = pytest.mark.integration

TTL = timedelta(hours=1)
#: Lockout settings of the failure-counting tests: 3 failures within 15 min lock for 1 min.
MAX, WINDOW, LOCKOUT = 3, 900.0, 60.0


def _hash(label: str) -> bytes:
    """A session's token hash (32 bytes, as the sessions table requires)."""
    return hashlib.sha256(label.encode()).digest()


async def _user(conn: store.Conn, role: Role = Role.USER, **kw: Any) -> asyncpg.Record:
    values: dict[str, Any] = {
        "email": f"{unique('u')}@example.com",
        "name": "Ada",
        "password_hash": "hash-1",
        "role": role,
    }
    values.update(kw)
    return await store.create_user(conn, **values)


def _server(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "name": "web",
        "hostname": f"{unique('web')}.example.com",
        "ip_address": "10.0.0.7",
        "port": 22,
        "username": "deploy",
        "encrypted_password": "v1:opaque",
    }
    values.update(overrides)
    return values


async def _count(conn: asyncpg.Connection, table: str) -> int:
    count: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
    return count


async def _failures(conn: asyncpg.Connection, email: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT failures, first_failed_at, locked_until FROM login_failures WHERE email = $1",
        email,
    )
    return row


async def _fail(conn: asyncpg.Connection, email: str, max_failures: int = MAX) -> float:
    """One failed login for `email`; the seconds it is locked for afterwards."""
    await store.record_failure(
        conn, email, max_failures=max_failures, window=WINDOW, lockout=LOCKOUT
    )
    return await store.locked_for(conn, email)


@pytest.fixture
async def pool(
    stack_settings: StackSettings, fresh_database: str, registry_conn: asyncpg.Connection
) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the same migrated database as `registry_conn`."""
    pool = await asyncpg.create_pool(
        **stack_settings.connect_kwargs(database=fresh_database), min_size=1, max_size=2
    )
    yield pool
    await pool.close()


# -- users ----------------------------------------------------------------------------------------
async def test_a_new_user_is_returned_and_read_without_the_password_hash(
    registry_conn: asyncpg.Connection,
) -> None:
    made = await _user(registry_conn, Role.ADMIN, name="Grace", active=False)
    assert uuid.UUID(made["id"]).version == 4
    assert (made["name"], made["role"], made["active"], made["provider"]) == (
        "Grace",
        "admin",
        False,
        "email",
    )
    assert made["last_login_at"] is None
    assert datetime.now(UTC) - made["created_at"] < timedelta(minutes=1)
    assert "password_hash" not in dict(made)
    assert await store.get_user(registry_conn, made["id"]) == made
    assert await store.get_user(registry_conn, str(uuid.uuid4())) is None
    # The hash is stored, only never returned.
    stored = await registry_conn.fetchval(
        "SELECT password_hash FROM users WHERE id = $1", made["id"]
    )
    assert stored == "hash-1"


async def test_users_are_listed_in_creation_order_a_page_at_a_time_with_the_total(
    registry_conn: asyncpg.Connection,
) -> None:
    made = [(await _user(registry_conn))["id"] for _ in range(3)]
    rows, total = await store.list_users(registry_conn, 0, 2)
    assert [r["id"] for r in rows] == made[:2] and total == 3
    rows, total = await store.list_users(registry_conn, 2, 2)
    assert [r["id"] for r in rows] == made[2:] and total == 3
    rows, total = await store.list_users(registry_conn, 5, 2)
    assert rows == [] and total == 3


async def test_a_duplicate_email_is_a_conflict_naming_the_field(
    registry_conn: asyncpg.Connection,
) -> None:
    first = await _user(registry_conn)
    with refused(Conflict, "email: a user with this e-mail exists"):
        await _user(registry_conn, email=first["email"])
    other = await _user(registry_conn)
    with refused(Conflict, "email: a user with this e-mail exists"):
        await store.update_user(registry_conn, other["id"], {"email": first["email"]})
    assert await _count(registry_conn, "users") == 2
    assert await store.get_user(registry_conn, other["id"]) == other


async def test_a_user_is_updated_column_by_column(registry_conn: asyncpg.Connection) -> None:
    user = await _user(registry_conn, Role.ADMIN)
    changed = await store.update_user(
        registry_conn, user["id"], {"name": "Renamed", "role": "user", "active": False}
    )
    assert changed is not None
    assert (changed["name"], changed["role"], changed["active"]) == ("Renamed", "user", False)
    assert (changed["email"], changed["created_at"]) == (user["email"], user["created_at"])
    assert await store.get_user(registry_conn, user["id"]) == changed
    # No change: the row as it is; no such user: None.
    assert await store.update_user(registry_conn, user["id"], {}) == changed
    assert await store.update_user(registry_conn, str(uuid.uuid4()), {"name": "x"}) is None
    assert await store.update_user(registry_conn, str(uuid.uuid4()), {}) is None
    # A value the enum does not have is PostgreSQL's refusal, not a conflict.
    with pytest.raises(asyncpg.InvalidTextRepresentationError):
        await store.update_user(registry_conn, user["id"], {"role": "superadmin"})


async def test_deleting_a_user_says_whether_one_was_deleted_and_takes_their_sessions(
    registry_conn: asyncpg.Connection,
) -> None:
    user, kept = await _user(registry_conn), await _user(registry_conn)
    await store.start_session(registry_conn, user["id"], _hash("a"), TTL, None)
    await store.start_session(registry_conn, kept["id"], _hash("b"), TTL, None)
    assert await store.delete_user(registry_conn, user["id"]) is True
    assert await store.get_user(registry_conn, user["id"]) is None
    assert await store.session_user(registry_conn, _hash("a")) is None
    assert await store.delete_user(registry_conn, user["id"]) is False
    assert await _count(registry_conn, "users") == 1
    assert await store.session_user(registry_conn, _hash("b")) is not None


# -- found and transaction ------------------------------------------------------------------------
async def test_found_passes_a_row_through_and_turns_none_into_not_found(
    registry_conn: asyncpg.Connection,
) -> None:
    user = await _user(registry_conn)
    row = await store.get_user(registry_conn, user["id"])
    assert store.found(row, "user") is row
    with refused(NotFound, "server not found"):
        store.found(await store.get_server(registry_conn, str(uuid.uuid4())), "server")


async def test_a_transaction_on_a_connection_commits_or_rolls_back_whole(
    registry_conn: asyncpg.Connection,
) -> None:
    async with store.transaction(registry_conn) as held:
        assert held is registry_conn
        kept = await _user(held)
    with pytest.raises(RuntimeError, match="second step"):
        async with store.transaction(registry_conn) as held:
            lost = await _user(held)
            await store.update_user(held, kept["id"], {"name": "Changed"})
            raise RuntimeError("the second step failed")
    assert await store.get_user(registry_conn, lost["id"]) is None
    assert await store.get_user(registry_conn, kept["id"]) == kept
    assert not registry_conn.is_in_transaction()


async def test_a_transaction_on_the_pool_holds_one_connection_for_its_duration(
    registry_conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    async with store.transaction(pool) as held:
        assert isinstance(held, PoolConnectionProxy) and held.is_in_transaction()
        kept = await _user(held)
        # Not visible to another connection before the commit.
        assert await store.get_user(registry_conn, kept["id"]) is None
    assert await store.get_user(registry_conn, kept["id"]) == kept
    with pytest.raises(Conflict):
        async with store.transaction(pool) as held:
            lost = await _user(held)
            await _user(held, email=kept["email"])
    assert await store.get_user(registry_conn, lost["id"]) is None
    assert pool.get_idle_size() == pool.get_size()  # the connection went back


# -- failed logins --------------------------------------------------------------------------------
async def test_the_max_failures_th_failure_within_the_window_locks_the_email(
    registry_conn: asyncpg.Connection,
) -> None:
    email = f"{unique('lock')}@x.y"
    assert await store.locked_for(registry_conn, email) == 0.0
    assert [await _fail(registry_conn, email) for _ in range(MAX - 1)] == [0.0] * (MAX - 1)
    row = await _failures(registry_conn, email)
    assert row is not None and row["failures"] == MAX - 1 and row["locked_until"] is None
    left = await _fail(registry_conn, email)
    assert LOCKOUT - 5 < left <= LOCKOUT
    row = await _failures(registry_conn, email)
    assert row is not None and row["failures"] == MAX
    locked = row["locked_until"] - row["first_failed_at"]
    assert timedelta(seconds=LOCKOUT) <= locked < timedelta(seconds=LOCKOUT + 5)
    # Other addresses are counted apart.
    assert await store.locked_for(registry_conn, f"{unique('other')}@x.y") == 0.0


async def test_one_allowed_failure_locks_at_the_first(registry_conn: asyncpg.Connection) -> None:
    email = f"{unique('one')}@x.y"
    assert LOCKOUT - 5 < await _fail(registry_conn, email, max_failures=1) <= LOCKOUT


async def test_failures_older_than_the_window_start_the_count_again(
    registry_conn: asyncpg.Connection,
) -> None:
    email = f"{unique('old')}@x.y"
    for _ in range(MAX - 1):
        await _fail(registry_conn, email)
    await registry_conn.execute(
        "UPDATE login_failures SET first_failed_at = now() - $2::interval WHERE email = $1",
        email,
        timedelta(seconds=WINDOW + 1),
    )
    assert await _fail(registry_conn, email) == 0.0
    row = await _failures(registry_conn, email)
    assert row is not None and row["failures"] == 1
    assert datetime.now(UTC) - row["first_failed_at"] < timedelta(minutes=1)


async def test_a_lock_runs_out_and_a_failure_inside_the_window_locks_again(
    registry_conn: asyncpg.Connection,
) -> None:
    email = f"{unique('again')}@x.y"
    for _ in range(MAX):
        await _fail(registry_conn, email)
    await registry_conn.execute(
        "UPDATE login_failures SET locked_until = now() - interval '1 second' WHERE email = $1",
        email,
    )
    assert await store.locked_for(registry_conn, email) == 0.0
    # Still within the window: the count goes on past the limit, so one more failure locks.
    assert await _fail(registry_conn, email) > 0
    row = await _failures(registry_conn, email)
    assert row is not None and row["failures"] == MAX + 1


async def test_clearing_the_failures_unlocks_and_forgets_the_count(
    registry_conn: asyncpg.Connection,
) -> None:
    email, other = f"{unique('clear')}@x.y", f"{unique('other')}@x.y"
    for _ in range(MAX):
        await _fail(registry_conn, email)
    await _fail(registry_conn, other)
    await store.clear_failures(registry_conn, email)
    assert await store.locked_for(registry_conn, email) == 0.0
    assert await _failures(registry_conn, email) is None
    assert await _failures(registry_conn, other) is not None
    await store.clear_failures(registry_conn, email)  # nothing to clear: no error
    assert await _fail(registry_conn, email) == 0.0  # counting starts at 1 again


async def test_purge_deletes_expired_sessions_and_only_the_counts_that_no_longer_matter(
    registry_conn: asyncpg.Connection,
) -> None:
    user = await _user(registry_conn)
    await registry_conn.execute(
        "INSERT INTO sessions (token_hash, user_id, expires_at) VALUES "
        "($2, $1, now() - interval '1 second'), ($3, $1, now()), "
        "($4, $1, now() + interval '1 hour')",
        user["id"],
        _hash("expired"),
        _hash("expiring now"),
        _hash("valid"),
    )
    await registry_conn.execute(
        "INSERT INTO login_failures (email, failures, first_failed_at, locked_until) VALUES "
        "('stale@x.y', 2, now() - interval '1 day', NULL), "
        "('lock-over@x.y', 5, now() - interval '1 day', now() - interval '1 hour'), "
        "('still-locked@x.y', 5, now() - interval '1 day', now() + interval '1 hour'), "
        "('fresh@x.y', 2, now(), NULL)"
    )
    assert await store.purge_expired(registry_conn, WINDOW) == (2, 2)
    left = await registry_conn.fetch("SELECT token_hash FROM sessions")
    assert [bytes(r["token_hash"]) for r in left] == [_hash("valid")]
    emails = {r["email"] for r in await registry_conn.fetch("SELECT email FROM login_failures")}
    assert emails == {"still-locked@x.y", "fresh@x.y"}
    assert await store.purge_expired(registry_conn, WINDOW) == (0, 0)


# -- logins and sessions --------------------------------------------------------------------------
async def test_the_login_record_is_what_a_password_check_needs(
    registry_conn: asyncpg.Connection,
) -> None:
    user = await _user(registry_conn, active=False)
    record = await store.login_record(registry_conn, user["email"])
    assert record is not None
    assert dict(record) == {"id": user["id"], "password_hash": "hash-1", "active": False}
    assert await store.login_record(registry_conn, "nobody@x.y") is None


async def test_a_session_opens_for_its_token_hash_until_it_expires(
    registry_conn: asyncpg.Connection,
) -> None:
    user = await _user(registry_conn, Role.ADMIN)
    async with store.transaction(registry_conn) as held:
        expires = await store.start_session(held, user["id"], _hash("t"), TTL, None)
    assert abs(expires - datetime.now(UTC) - TTL) < timedelta(minutes=1)
    assert await store.session_user(registry_conn, _hash("t")) == CurrentUser(
        user["id"], user["email"], Role.ADMIN
    )
    stored = await store.get_user(registry_conn, user["id"])
    assert stored is not None
    assert datetime.now(UTC) - stored["last_login_at"] < timedelta(minutes=1)
    assert (
        await registry_conn.fetchval("SELECT password_hash FROM users WHERE id = $1", user["id"])
        == "hash-1"
    )  # no rehash asked for
    assert await store.session_user(registry_conn, _hash("unknown")) is None
    await registry_conn.execute(
        "UPDATE sessions SET expires_at = now() WHERE token_hash = $1", _hash("t")
    )
    assert await store.session_user(registry_conn, _hash("t")) is None


async def test_a_login_stores_a_rehash_and_drops_the_users_expired_sessions(
    registry_conn: asyncpg.Connection,
) -> None:
    user, other = await _user(registry_conn), await _user(registry_conn)
    await store.start_session(registry_conn, user["id"], _hash("old"), TTL, None)
    await store.start_session(registry_conn, other["id"], _hash("other"), TTL, None)
    await registry_conn.execute("UPDATE sessions SET expires_at = now() - interval '1 minute'")
    await store.start_session(registry_conn, user["id"], _hash("new"), TTL, "hash-2")
    assert (
        await registry_conn.fetchval("SELECT password_hash FROM users WHERE id = $1", user["id"])
        == "hash-2"
    )
    hashes = {bytes(r["token_hash"]) for r in await registry_conn.fetch("SELECT * FROM sessions")}
    # The user's expired session went; another user's waits for the purge.
    assert hashes == {_hash("new"), _hash("other")}


async def test_a_deactivated_users_sessions_open_nothing(
    registry_conn: asyncpg.Connection,
) -> None:
    user = await _user(registry_conn)
    await store.start_session(registry_conn, user["id"], _hash("t"), TTL, None)
    await store.update_user(registry_conn, user["id"], {"active": False})
    assert await store.session_user(registry_conn, _hash("t")) is None
    await store.update_user(registry_conn, user["id"], {"active": True})
    assert await store.session_user(registry_conn, _hash("t")) is not None


async def test_a_session_is_ended_alone_or_with_all_of_its_users(
    registry_conn: asyncpg.Connection,
) -> None:
    user, other = await _user(registry_conn), await _user(registry_conn)
    for label in ("a", "b", "c"):
        await store.start_session(registry_conn, user["id"], _hash(label), TTL, None)
    await store.start_session(registry_conn, other["id"], _hash("other"), TTL, None)
    await store.end_session(registry_conn, _hash("a"))
    assert await store.session_user(registry_conn, _hash("a")) is None
    assert await store.session_user(registry_conn, _hash("b")) is not None
    await store.end_sessions(registry_conn, user["id"])
    assert await store.session_user(registry_conn, _hash("c")) is None
    assert await store.session_user(registry_conn, _hash("other")) is not None
    assert await _count(registry_conn, "sessions") == 1


async def test_a_session_is_keyed_by_a_32_byte_hash(registry_conn: asyncpg.Connection) -> None:
    user = await _user(registry_conn)
    with pytest.raises(asyncpg.CheckViolationError):
        await store.start_session(registry_conn, user["id"], b"a-plain-token", TTL, None)


# -- servers --------------------------------------------------------------------------------------
async def test_a_new_server_is_returned_and_read_without_its_password(
    registry_conn: asyncpg.Connection,
) -> None:
    values = _server(server_type="windows", server_category="cloud")
    made = await store.create_server(registry_conn, values)
    assert made["id"] == values["id"] and made["hostname"] == values["hostname"]
    assert (made["server_type"], made["server_category"]) == ("windows", "cloud")
    assert (made["is_online"], made["last_seen_at"]) == (False, None)
    assert "encrypted_password" not in dict(made)
    assert await store.get_server(registry_conn, values["id"]) == made
    assert await store.get_server(registry_conn, str(uuid.uuid4())) is None
    defaults = await store.create_server(registry_conn, _server())
    assert (defaults["server_type"], defaults["server_category"]) == ("linux", "physical")


async def test_a_duplicate_hostname_or_id_is_a_conflict_naming_the_field(
    registry_conn: asyncpg.Connection,
) -> None:
    first = await store.create_server(registry_conn, _server())
    with refused(Conflict, "hostname: a server with this hostname exists"):
        await store.create_server(registry_conn, _server(hostname=first["hostname"]))
    with refused(Conflict, "id: a server with this id exists"):
        await store.create_server(registry_conn, _server(id=first["id"]))
    other = await store.create_server(registry_conn, _server())
    with refused(Conflict, "hostname: a server with this hostname exists"):
        await store.update_server(registry_conn, other["id"], {"hostname": first["hostname"]})
    assert await _count(registry_conn, "servers") == 2


async def test_other_constraint_violations_are_postgresqls_errors(
    registry_conn: asyncpg.Connection,
) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await store.create_server(registry_conn, _server(port=0))
    with pytest.raises(asyncpg.NotNullViolationError):
        await store.create_server(registry_conn, _server(username=None))
    with pytest.raises(asyncpg.InvalidTextRepresentationError):
        await store.create_server(registry_conn, _server(server_type="solaris"))
    assert await _count(registry_conn, "servers") == 0


async def test_servers_are_listed_by_hostname_a_page_at_a_time_with_the_total(
    registry_conn: asyncpg.Connection,
) -> None:
    for name in ("c", "a", "b"):
        await store.create_server(registry_conn, _server(hostname=f"{name}.example.com"))
    rows, total = await store.list_servers(registry_conn, 0, 2)
    assert [r["hostname"] for r in rows] == ["a.example.com", "b.example.com"] and total == 3
    rows, total = await store.list_servers(registry_conn, 2, 10)
    assert [r["hostname"] for r in rows] == ["c.example.com"] and total == 3


async def test_a_server_is_updated_deleted_and_known_to_exist(
    registry_conn: asyncpg.Connection,
) -> None:
    server = await store.create_server(registry_conn, _server())
    assert await store.server_exists(registry_conn, server["id"]) is True
    changed = await store.update_server(
        registry_conn, server["id"], {"port": 2222, "server_type": "macos", "ip_address": None}
    )
    assert changed is not None
    assert (changed["port"], changed["server_type"], changed["ip_address"]) == (2222, "macos", None)
    assert await store.update_server(registry_conn, server["id"], {}) == changed
    assert await store.update_server(registry_conn, str(uuid.uuid4()), {"port": 1}) is None
    assert await store.delete_server(registry_conn, server["id"]) is True
    assert await store.delete_server(registry_conn, server["id"]) is False
    assert await store.server_exists(registry_conn, server["id"]) is False
    assert await store.get_server(registry_conn, server["id"]) is None
