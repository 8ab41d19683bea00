"""The registry's SQL: users, sessions, failed logins and servers (asyncpg, no ORM).

Functions take a connection (or the pool) and return records; the rules and the transactions
around them are the callers' (`registry.accounts`, `registry.inventory`). A write that breaks a
unique constraint raises `Conflict` naming the field; other constraint violations surface as
asyncpg's errors. `found()` turns a missing row into `NotFound`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from registry.errors import Conflict, NotFound
from registry.permissions import Role

Connection = asyncpg.Connection | PoolConnectionProxy
Conn = Connection | asyncpg.Pool

USER_COLUMNS = (
    "id, email, name, role::text AS role, active, provider::text AS provider, "
    "last_login_at, created_at"
)
SERVER_COLUMNS = (
    "id, name, hostname, ip_address, port, username, server_type::text AS server_type, "
    "server_category::text AS server_category, is_online, last_seen_at, created_at"
)


#: What a unique constraint's violation means, by constraint name (no value is echoed).
_DUPLICATES = {
    "users_email_key": "email: a user with this e-mail exists",
    "servers_hostname_key": "hostname: a server with this hostname exists",
    "servers_pkey": "id: a server with this id exists",
    "users_pkey": "id: a user with this id exists",
}

#: Enum columns take their text parameter with a cast.
_CASTS = {
    "role": "::user_role",
    "server_type": "::server_type",
    "server_category": "::server_category",
}


def _param(column: str, n: int) -> str:
    return f"${n}{_CASTS.get(column, '')}"


@asynccontextmanager
async def transaction(conn: Conn) -> AsyncIterator[Connection]:
    """A transaction on `conn`, or on a connection taken from the pool for its duration."""
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as held, held.transaction():
            yield held
    else:
        async with conn.transaction():
            yield conn


def found(row: asyncpg.Record | None, what: str) -> asyncpg.Record:
    """`row`, or `NotFound` ("<what> not found") when a lookup or an update found none."""
    if row is None:
        raise NotFound(f"{what} not found")
    return row


async def _write(conn: Conn, query: str, *args: Any) -> asyncpg.Record | None:
    try:
        row: asyncpg.Record | None = await conn.fetchrow(query, *args)
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(_DUPLICATES.get(exc.constraint_name or "", "already exists")) from None
    return row


# Table and column names below come from this module and the API models (which forbid unknown
# fields), never from a request; values are always parameters.
async def _get(conn: Conn, table: str, columns: str, row_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {columns} FROM {table} WHERE id = $1", row_id
    )
    return row


async def _list(
    conn: Conn, table: str, columns: str, order: str, skip: int, limit: int
) -> tuple[list[asyncpg.Record], int]:
    rows = await conn.fetch(
        f"SELECT {columns} FROM {table} ORDER BY {order} OFFSET $1 LIMIT $2", skip, limit
    )
    count: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
    return rows, count


async def _insert(conn: Conn, table: str, columns: str, values: dict[str, Any]) -> asyncpg.Record:
    params = ", ".join(_param(c, n) for n, c in enumerate(values, 1))
    row = await _write(
        conn,
        f"INSERT INTO {table} ({', '.join(values)}) VALUES ({params}) RETURNING {columns}",
        *values.values(),
    )
    assert row is not None  # INSERT … RETURNING
    return row


async def _update(
    conn: Conn, table: str, columns: str, row_id: str, changes: dict[str, Any]
) -> asyncpg.Record | None:
    if not changes:
        return await _get(conn, table, columns, row_id)
    sets = ", ".join(f"{c} = {_param(c, n)}" for n, c in enumerate(changes, 2))
    return await _write(
        conn,
        f"UPDATE {table} SET {sets} WHERE id = $1 RETURNING {columns}",
        row_id,
        *changes.values(),
    )


async def _delete(conn: Conn, table: str, row_id: str) -> bool:
    status: str = await conn.execute(f"DELETE FROM {table} WHERE id = $1", row_id)
    return status != "DELETE 0"


@dataclass(frozen=True)
class CurrentUser:
    id: str
    email: str
    role: Role


# -- users ----------------------------------------------------------------------------------------
async def create_user(
    conn: Conn, *, email: str, name: str, password_hash: str, role: Role, active: bool = True
) -> asyncpg.Record:
    values = {
        "id": str(uuid.uuid4()),
        "email": email,
        "password_hash": password_hash,
        "name": name,
        "role": role.value,
        "active": active,
    }
    return await _insert(conn, "users", USER_COLUMNS, values)


async def get_user(conn: Conn, user_id: str) -> asyncpg.Record | None:
    return await _get(conn, "users", USER_COLUMNS, user_id)


async def list_users(conn: Conn, skip: int, limit: int) -> tuple[list[asyncpg.Record], int]:
    return await _list(conn, "users", USER_COLUMNS, "created_at, id", skip, limit)


async def update_user(conn: Conn, user_id: str, changes: dict[str, Any]) -> asyncpg.Record | None:
    """Apply `changes` (column → value); None when there is no such user."""
    return await _update(conn, "users", USER_COLUMNS, user_id, changes)


async def end_sessions(conn: Conn, user_id: str) -> None:
    """End every session of the user."""
    await conn.execute("DELETE FROM sessions WHERE user_id = $1", user_id)


async def delete_user(conn: Conn, user_id: str) -> bool:
    return await _delete(conn, "users", user_id)


# -- login and sessions ---------------------------------------------------------------------------
async def login_record(conn: Conn, email: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id, password_hash, active FROM users WHERE email = $1", email
    )
    return row


async def locked_for(conn: Conn, email: str) -> float:
    """Seconds the e-mail stays locked (0: not locked)."""
    left: float | None = await conn.fetchval(
        "SELECT extract(epoch FROM locked_until - now())::float8 FROM login_failures "
        "WHERE email = $1 AND locked_until > now()",
        email,
    )
    return left or 0.0


async def record_failure(
    conn: Conn, email: str, *, max_failures: int, window: float, lockout: float
) -> None:
    """Count a failed login; the `max_failures`-th within `window` seconds locks the e-mail."""
    await conn.execute(
        """
        INSERT INTO login_failures AS f (email, failures, first_failed_at, locked_until)
        VALUES ($1, 1, now(), CASE WHEN $3 <= 1 THEN now() + $4::interval END)
        ON CONFLICT (email) DO UPDATE SET
            failures = CASE WHEN f.first_failed_at < now() - $2::interval
                            THEN 1 ELSE f.failures + 1 END,
            first_failed_at = CASE WHEN f.first_failed_at < now() - $2::interval
                                   THEN now() ELSE f.first_failed_at END,
            locked_until = CASE
                WHEN (CASE WHEN f.first_failed_at < now() - $2::interval
                           THEN 1 ELSE f.failures + 1 END) >= $3
                THEN now() + $4::interval END
        """,
        email,
        timedelta(seconds=window),
        max_failures,
        timedelta(seconds=lockout),
    )


async def start_session(
    conn: Connection, user_id: str, token_hash: bytes, ttl: timedelta, new_hash: str | None
) -> datetime:
    """Record a successful login: the session, `last_login_at`, a rehash (when `new_hash`), and
    the user's expired sessions gone. Run it in a `transaction()`."""
    expires: datetime = await conn.fetchval(
        "INSERT INTO sessions (token_hash, user_id, expires_at) "
        "VALUES ($1, $2, now() + $3::interval) RETURNING expires_at",
        token_hash,
        user_id,
        ttl,
    )
    await conn.execute(
        "UPDATE users SET last_login_at = now(), "
        "password_hash = coalesce($2, password_hash) WHERE id = $1",
        user_id,
        new_hash,
    )
    await conn.execute("DELETE FROM sessions WHERE user_id = $1 AND expires_at <= now()", user_id)
    return expires


async def clear_failures(conn: Conn, email: str) -> None:
    await conn.execute("DELETE FROM login_failures WHERE email = $1", email)


async def purge_expired(conn: Conn, window: float) -> tuple[int, int]:
    """Delete expired sessions and failure counts that no longer matter; returns both counts."""
    sessions: str = await conn.execute("DELETE FROM sessions WHERE expires_at <= now()")
    failures: str = await conn.execute(
        "DELETE FROM login_failures WHERE (locked_until IS NULL OR locked_until <= now()) "
        "AND first_failed_at < now() - $1::interval",
        timedelta(seconds=window),
    )
    return int(sessions.split()[-1]), int(failures.split()[-1])


async def session_user(conn: Conn, token_hash: bytes) -> CurrentUser | None:
    row = await conn.fetchrow(
        "SELECT u.id, u.email, u.role::text AS role FROM sessions s "
        "JOIN users u ON u.id = s.user_id "
        "WHERE s.token_hash = $1 AND s.expires_at > now() AND u.active",
        token_hash,
    )
    return None if row is None else CurrentUser(row["id"], row["email"], Role(row["role"]))


async def end_session(conn: Conn, token_hash: bytes) -> None:
    await conn.execute("DELETE FROM sessions WHERE token_hash = $1", token_hash)


# -- servers --------------------------------------------------------------------------------------
async def create_server(conn: Conn, values: dict[str, Any]) -> asyncpg.Record:
    return await _insert(conn, "servers", SERVER_COLUMNS, values)


async def get_server(conn: Conn, server_id: str) -> asyncpg.Record | None:
    return await _get(conn, "servers", SERVER_COLUMNS, server_id)


async def list_servers(conn: Conn, skip: int, limit: int) -> tuple[list[asyncpg.Record], int]:
    return await _list(conn, "servers", SERVER_COLUMNS, "hostname", skip, limit)


async def update_server(
    conn: Conn, server_id: str, changes: dict[str, Any]
) -> asyncpg.Record | None:
    return await _update(conn, "servers", SERVER_COLUMNS, server_id, changes)


async def delete_server(conn: Conn, server_id: str) -> bool:
    return await _delete(conn, "servers", server_id)


async def server_exists(conn: Conn, server_id: str) -> bool:
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM servers WHERE id = $1)", server_id
    )
    return found
