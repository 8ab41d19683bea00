"""The registry's SQL: users, sessions, failed logins and servers (asyncpg, no ORM).

Functions take a connection (or the pool) and return records; constraint violations surface as
asyncpg's errors and become 409/422 answers in one place (`registry.app`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

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


@dataclass(frozen=True)
class CurrentUser:
    id: str
    email: str
    role: Role


# -- users ----------------------------------------------------------------------------------------
async def create_user(
    conn: Conn, *, email: str, name: str, password_hash: str, role: Role, active: bool = True
) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"INSERT INTO users (id, email, password_hash, name, role, active) "
        f"VALUES ($1, $2, $3, $4, $5::user_role, $6) RETURNING {USER_COLUMNS}",
        str(uuid.uuid4()),
        email,
        password_hash,
        name,
        role.value,
        active,
    )
    assert row is not None  # INSERT … RETURNING
    return row


async def get_user(conn: Conn, user_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id
    )
    return row


async def list_users(conn: Conn, skip: int, limit: int) -> tuple[list[asyncpg.Record], int]:
    rows = await conn.fetch(
        f"SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id OFFSET $1 LIMIT $2",
        skip,
        limit,
    )
    count: int = await conn.fetchval("SELECT count(*) FROM users")
    return rows, count


async def update_user(
    conn: Connection, user_id: str, changes: dict[str, Any]
) -> asyncpg.Record | None:
    """Apply `changes` (column → value); deactivating ends the user's sessions."""
    async with conn.transaction():
        row: asyncpg.Record | None
        if changes:
            casts = {"role": "::user_role"}
            sets = ", ".join(
                f"{col} = ${i}{casts.get(col, '')}" for i, col in enumerate(changes, 2)
            )
            row = await conn.fetchrow(
                f"UPDATE users SET {sets} WHERE id = $1 RETURNING {USER_COLUMNS}",
                user_id,
                *changes.values(),
            )
        else:
            row = await get_user(conn, user_id)
        if row is not None and (changes.get("active") is False or "password_hash" in changes):
            await conn.execute("DELETE FROM sessions WHERE user_id = $1", user_id)
        return row


async def delete_user(conn: Conn, user_id: str) -> bool:
    status: str = await conn.execute("DELETE FROM users WHERE id = $1", user_id)
    return status != "DELETE 0"


async def count_admins(conn: Conn) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM users WHERE role = 'admin' AND active")
    return n


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
    """Record a successful login: the session, `last_login_at`, a rehash, cleared failures."""
    async with conn.transaction():
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
        await conn.execute(
            "DELETE FROM sessions WHERE user_id = $1 AND expires_at <= now()", user_id
        )
        return expires


async def clear_failures(conn: Conn, email: str) -> None:
    await conn.execute("DELETE FROM login_failures WHERE email = $1", email)


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
    cols = list(values)
    casts = {"server_type": "::server_type", "server_category": "::server_category"}
    params = ", ".join(f"${i}{casts.get(c, '')}" for i, c in enumerate(cols, 1))
    row: asyncpg.Record | None = await conn.fetchrow(
        f"INSERT INTO servers ({', '.join(cols)}) VALUES ({params}) RETURNING {SERVER_COLUMNS}",
        *values.values(),
    )
    assert row is not None  # INSERT … RETURNING
    return row


async def get_server(conn: Conn, server_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {SERVER_COLUMNS} FROM servers WHERE id = $1", server_id
    )
    return row


async def list_servers(conn: Conn, skip: int, limit: int) -> tuple[list[asyncpg.Record], int]:
    rows = await conn.fetch(
        f"SELECT {SERVER_COLUMNS} FROM servers ORDER BY hostname OFFSET $1 LIMIT $2",
        skip,
        limit,
    )
    count: int = await conn.fetchval("SELECT count(*) FROM servers")
    return rows, count


async def update_server(
    conn: Conn, server_id: str, changes: dict[str, Any]
) -> asyncpg.Record | None:
    if not changes:
        return await get_server(conn, server_id)
    casts = {"server_type": "::server_type", "server_category": "::server_category"}
    sets = ", ".join(f"{col} = ${i}{casts.get(col, '')}" for i, col in enumerate(changes, 2))
    row: asyncpg.Record | None = await conn.fetchrow(
        f"UPDATE servers SET {sets} WHERE id = $1 RETURNING {SERVER_COLUMNS}",
        server_id,
        *changes.values(),
    )
    return row


async def delete_server(conn: Conn, server_id: str) -> bool:
    status: str = await conn.execute("DELETE FROM servers WHERE id = $1", server_id)
    return status != "DELETE 0"


async def server_exists(conn: Conn, server_id: str) -> bool:
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM servers WHERE id = $1)", server_id
    )
    return found
