"""The server inventory: register, read, change and remove servers.

Every operation takes the pool or a connection and the API's models, and refuses with an error
of `registry.errors`: `Invalid` (a null for a field that needs a value), `NotFound`, or
`Conflict` (a hostname or id that exists). The SSH password is write-only: encrypted with the
registry's keyring (`registry.crypto`), bound to the row's id, before it reaches the database,
and never returned.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import asyncpg

from registry import store
from registry.crypto import Keyring
from registry.errors import NotFound
from registry.models import ServerCreate, ServerPublic, ServersPublic, ServerUpdate
from registry.store import Conn


def _public(row: asyncpg.Record) -> ServerPublic:
    return ServerPublic.model_validate(dict(row))


def _columns(keyring: Keyring, body: ServerCreate) -> dict[str, Any]:
    server_id = str(body.id or uuid.uuid4())
    values = body.model_dump(mode="json", exclude={"id", "password"})
    values["id"] = server_id
    values["encrypted_password"] = keyring.encrypt(body.password.get_secret_value(), server_id)
    return values


async def create_server(conn: Conn, keyring: Keyring, body: ServerCreate) -> ServerPublic:
    """A new server (a new UUID unless `body.id` gives one); `Conflict` when the hostname or
    the id exists."""
    return _public(await store.create_server(conn, _columns(keyring, body)))


async def create_servers(
    conn: Conn, keyring: Keyring, bodies: Iterable[ServerCreate]
) -> list[ServerPublic]:
    """Several servers in one transaction: all of them, or none when one is refused."""
    async with store.transaction(conn) as held:
        return [await create_server(held, keyring, body) for body in bodies]


async def get_server(conn: Conn, server_id: str) -> ServerPublic:
    return _public(store.found(await store.get_server(conn, server_id), "server"))


async def list_servers(conn: Conn, skip: int, limit: int) -> ServersPublic:
    """A page of the inventory, by hostname."""
    rows, count = await store.list_servers(conn, skip, limit)
    return ServersPublic(data=[_public(r) for r in rows], count=count)


async def update_server(
    conn: Conn, keyring: Keyring, server_id: str, body: ServerUpdate
) -> ServerPublic:
    """Apply the fields sent; a new password is encrypted like a new server's."""
    changes = body.changes()
    if body.password is not None:
        changes["encrypted_password"] = keyring.encrypt(body.password.get_secret_value(), server_id)
    return _public(store.found(await store.update_server(conn, server_id, changes), "server"))


async def delete_server(conn: Conn, server_id: str) -> None:
    """Remove a server and its stored metrics."""
    if not await store.delete_server(conn, server_id):
        raise NotFound("server not found")
