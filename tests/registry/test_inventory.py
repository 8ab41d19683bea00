"""Integration: the inventory rules of `registry.inventory`, called directly on a migrated
database of each test's own in the real PostgreSQL (no HTTP)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from registry import inventory
from registry.crypto import Keyring
from registry.errors import Conflict, DecryptionError, Invalid, NotFound
from registry.models import ServerCategory, ServerCreate, ServerType, ServerUpdate
from tests.factories import unique
from tests.registry.harness import refused

pytestmark = pytest.mark.integration


def _body(**overrides: Any) -> ServerCreate:
    values: dict[str, Any] = {
        "name": "web",
        "hostname": f"{unique('web')}.example.com",
        "ip_address": "10.0.0.7",
        "username": "deploy",
        "password": SecretStr(f"ssh-{uuid.uuid4().hex}"),
    }
    values.update(overrides)
    return ServerCreate(**values)


async def _ciphertext(conn: asyncpg.Connection, server_id: str) -> str:
    stored: str = await conn.fetchval(
        "SELECT encrypted_password FROM servers WHERE id = $1", server_id
    )
    return stored


async def _count(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM servers")
    return count


async def test_the_ssh_password_is_stored_encrypted_and_decrypts(
    registry_conn: asyncpg.Connection, keyring: Keyring
) -> None:
    body = _body(server_type=ServerType.WINDOWS, server_category=ServerCategory.CLOUD)
    server = await inventory.create_server(registry_conn, keyring, body)
    assert uuid.UUID(server.id).version == 4
    assert (server.hostname, server.ip_address, server.port) == (body.hostname, "10.0.0.7", 22)
    assert (server.server_type, server.server_category) == (
        ServerType.WINDOWS,
        ServerCategory.CLOUD,
    )
    assert not {"password", "encrypted_password"} & set(server.model_dump())
    plain = body.password.get_secret_value()
    stored = await _ciphertext(registry_conn, server.id)
    assert stored.startswith("v1:") and plain not in stored
    assert keyring.decrypt(stored, server.id) == plain
    with pytest.raises(DecryptionError):  # bound to its row
        keyring.decrypt(stored, str(uuid.uuid4()))


async def test_a_duplicate_hostname_or_id_is_a_conflict_and_adds_no_row(
    registry_conn: asyncpg.Connection, keyring: Keyring
) -> None:
    first = await inventory.create_server(registry_conn, keyring, _body(port=2222))
    same_place = _body(hostname=first.hostname, port=2222)
    with refused(Conflict, "hostname: a server with this hostname exists"):  # no value echoed
        await inventory.create_server(registry_conn, keyring, same_place)
    # The hostname alone is unique (the column's constraint): another port does not help.
    with refused(Conflict, "hostname: a server with this hostname exists"):
        await inventory.create_server(registry_conn, keyring, _body(hostname=first.hostname))
    with refused(Conflict, "id: a server with this id exists"):
        await inventory.create_server(registry_conn, keyring, _body(id=uuid.UUID(first.id)))
    assert await _count(registry_conn) == 1

    other = await inventory.create_server(registry_conn, keyring, _body())
    with refused(Conflict, "hostname: a server with this hostname exists"):
        await inventory.update_server(
            registry_conn, keyring, other.id, ServerUpdate(hostname=first.hostname)
        )
    assert await inventory.get_server(registry_conn, other.id) == other


async def test_unknown_ids_are_not_found(
    registry_conn: asyncpg.Connection, keyring: Keyring
) -> None:
    unknown = str(uuid.uuid4())
    with refused(NotFound, "server not found"):
        await inventory.get_server(registry_conn, unknown)
    for change in (ServerUpdate(port=2222), ServerUpdate()):
        with refused(NotFound, "server not found"):
            await inventory.update_server(registry_conn, keyring, unknown, change)
    with refused(NotFound, "server not found"):
        await inventory.delete_server(registry_conn, unknown)


async def test_an_update_changes_what_was_sent_and_encrypts_a_new_password(
    registry_conn: asyncpg.Connection, keyring: Keyring
) -> None:
    server = await inventory.create_server(registry_conn, keyring, _body())
    before = await _ciphertext(registry_conn, server.id)
    moved = await inventory.update_server(
        registry_conn, keyring, server.id, ServerUpdate(port=2222, ip_address=None)
    )
    assert moved == server.model_copy(update={"port": 2222, "ip_address": None})
    assert await _ciphertext(registry_conn, server.id) == before  # no password sent, none changed
    await inventory.update_server(
        registry_conn, keyring, server.id, ServerUpdate(password="new-pw-123")
    )
    stored = await _ciphertext(registry_conn, server.id)
    assert "new-pw-123" not in stored and keyring.decrypt(stored, server.id) == "new-pw-123"


async def test_null_for_a_field_that_needs_a_value_is_invalid(
    registry_conn: asyncpg.Connection, keyring: Keyring
) -> None:
    server = await inventory.create_server(registry_conn, keyring, _body())
    fields = ("name", "hostname", "port", "username", "server_type", "server_category")
    for field in fields:
        with refused(Invalid, f"{field}: may not be null"):
            await inventory.update_server(
                registry_conn, keyring, server.id, ServerUpdate(**{field: None})
            )
    assert await inventory.get_server(registry_conn, server.id) == server


async def test_several_servers_land_together_or_not_at_all(
    registry_conn: asyncpg.Connection, keyring: Keyring
) -> None:
    batch = [_body() for _ in range(3)]
    # The fourth repeats the first's hostname: the three before it were written by then.
    refused_batch = [*batch, _body(hostname=batch[0].hostname)]
    with refused(Conflict, "hostname: a server with this hostname exists"):
        await inventory.create_servers(registry_conn, keyring, refused_batch)
    assert await _count(registry_conn) == 0

    made = await inventory.create_servers(registry_conn, keyring, batch)
    assert [s.hostname for s in made] == [b.hostname for b in batch]
    for server, body in zip(made, batch, strict=True):
        stored = await _ciphertext(registry_conn, server.id)
        assert keyring.decrypt(stored, server.id) == body.password.get_secret_value()


async def test_servers_are_listed_by_hostname_and_removed(
    registry_conn: asyncpg.Connection, keyring: Keyring
) -> None:
    made = [
        await inventory.create_server(registry_conn, keyring, _body(hostname=f"h{i}.example.com"))
        for i in (2, 0, 1)
    ]
    page = await inventory.list_servers(registry_conn, 0, 2)
    assert page.count == 3 and [s.hostname for s in page.data] == [
        "h0.example.com",
        "h1.example.com",
    ]
    await inventory.delete_server(registry_conn, made[0].id)
    assert (await inventory.list_servers(registry_conn, 0, 10)).data == [made[1], made[2]]
