"""`fleetpulse registry` and its administration commands.

- `serve()`: the HTTP API under uvicorn (HTTPS when a certificate is configured); SIGTERM or
  SIGINT drain requests, stop the status consumer (bounded) and close the pool.
- `create_admin()`: the first admin (or another one), with the password hashed like any other.
- `rotate_key()`: a new key version, then every stored password re-encrypted under it in one
  transaction (all rows or none).
"""

from __future__ import annotations

import asyncio
import logging
import signal

import asyncpg

from registry import accounts
from registry.crypto import Keyring, load_keyring, write_key_file
from registry.errors import Conflict, Invalid, RegistryError
from registry.permissions import Role
from registry.security import Passwords
from registry.settings import RegistrySettings

log = logging.getLogger(__name__)


def serve(settings: RegistrySettings) -> None:
    """Run the API until SIGTERM/SIGINT."""
    import uvicorn

    from registry.app import create_app

    asyncio.run(_preflight(settings))
    keyring = load_keyring(settings, create=True)
    app = create_app(settings, keyring)
    # uvicorn handles SIGTERM/SIGINT (drain, lifespan shutdown) and then raises the signal again
    # under the handler found at start; this one lets a clean shutdown end with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _after_shutdown)
    log.info(
        "registry on %s://%s:%d (OpenAPI at /docs), database %s",
        settings.scheme,
        settings.registry_host,
        settings.registry_port,
        settings.describe(),
    )
    uvicorn.run(
        app,
        host=settings.registry_host,
        port=settings.registry_port,
        ssl_certfile=settings.registry_tls_cert,
        ssl_keyfile=settings.registry_tls_key,
        log_config=None,  # the command line's logging; uvicorn's access lines carry no bodies
        timeout_graceful_shutdown=10,
        server_header=False,
    )


def _after_shutdown(signum: int, frame: object) -> None:
    log.info("registry stopped (%s)", signal.Signals(signum).name)


async def _connect(settings: RegistrySettings) -> asyncpg.Connection:
    try:
        conn: asyncpg.Connection = await asyncpg.connect(**settings.connect_kwargs())
    except (OSError, asyncpg.PostgresError) as exc:
        raise RegistryError(f"cannot connect to {settings.describe()}: {exc}") from None
    return conn


async def _preflight(settings: RegistrySettings) -> None:
    """Fail with one line, before uvicorn starts, when the database is not ready."""
    conn = await _connect(settings)
    try:
        ready = await conn.fetchval("SELECT to_regclass('sessions') IS NOT NULL")
    finally:
        await conn.close()
    if not ready:
        raise RegistryError(
            f"{settings.describe()} lacks the registry's tables: run `fleetpulse db migrate`"
        )


async def create_admin(settings: RegistrySettings, email: str, name: str, password: str) -> str:
    """Create an admin (`registry.accounts.create_user`); returns its id. Also makes sure the
    encryption key exists."""
    from pydantic import SecretStr, ValidationError

    from registry.models import UserCreate

    try:
        body = UserCreate(email=email, name=name, password=SecretStr(password), role=Role.ADMIN)
    except ValidationError as exc:
        msg = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise Invalid(f"invalid admin: {msg}") from None
    load_keyring(settings, create=True)
    conn = await _connect(settings)
    try:
        user = await accounts.create_user(conn, Passwords(), body)
    except Conflict:
        # The operator typed the address: naming it again says which one.
        raise Conflict(f"a user with e-mail {body.email} exists already") from None
    except asyncpg.UndefinedTableError:
        raise RegistryError(
            "the database has no users table: run `fleetpulse db migrate`"
        ) from None
    finally:
        await conn.close()
    return user.id


async def reencrypt_all(conn: asyncpg.Connection, old: Keyring, new: Keyring) -> int:
    """Re-encrypt every server password under `new`'s current key, in one transaction."""
    async with conn.transaction():
        rows = await conn.fetch("SELECT id, encrypted_password FROM servers FOR UPDATE")
        for row in rows:
            plain = old.decrypt(row["encrypted_password"], row["id"])
            await conn.execute(
                "UPDATE servers SET encrypted_password = $2 WHERE id = $1",
                row["id"],
                new.encrypt(plain, row["id"]),
            )
    return len(rows)


async def rotate_key(settings: RegistrySettings) -> tuple[int, int]:
    """Activate a new key version and re-encrypt every row; returns (version, rows).

    With keys in the key file, a new random key is appended to it first (older versions stay,
    so rows not yet re-encrypted keep decrypting if this fails). With keys in
    FLEETPULSE_REGISTRY_KEYS the operator adds the new version there; this re-encrypts
    every row under the highest version.
    """
    keyring = load_keyring(settings)
    if settings.registry_keys is None:
        keyring = keyring.with_new_key()
        write_key_file(settings.key_path, keyring)
        log.info("added key version %d to %s", keyring.current, settings.key_path)
    conn = await _connect(settings)
    try:
        rows = await reencrypt_all(conn, keyring, keyring)
    finally:
        await conn.close()
    return keyring.current, rows
