"""`fleetpulse registry` and its administration commands.

- `RegistryService`: the HTTP API under uvicorn (`build_server`: HTTPS, or plain HTTP only
  when asked), in the common lifecycle: SIGTERM or SIGINT drain requests, stop the status
  consumer (bounded) and close the pool.
- `create_admin()`: the first admin (or another one), with the password hashed like any other.
- `rotate_key()`: a new key version, then every stored password re-encrypted under it in one
  transaction (all rows or none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import asyncpg
import uvicorn
from starlette.types import ASGIApp

from registry import accounts
from registry.crypto import Keyring, load_keyring, write_key_file
from registry.errors import Conflict, Invalid, RegistryError
from registry.headers import SecurityHeaders
from registry.permissions import Role
from registry.security import Passwords
from registry.settings import RegistrySettings
from registry.tls import ServingCertificate
from runtime.postgres import connect
from runtime.service import Service
from schemas.messages import describe_validation_error

log = logging.getLogger(__name__)


class RegistryService(Service):
    """The HTTP API under uvicorn, in the common lifecycle (uvicorn's own signal handling is
    off: the lifecycle's SIGTERM/SIGINT ask it to drain)."""

    name = "registry"

    def __init__(self, settings: RegistrySettings) -> None:
        super().__init__()
        self.settings = settings
        self.server: RegistryServer | None = None

    async def start(self) -> None:
        from registry.app import create_app

        s = self.settings
        # The certificate first: without it nothing else is worth checking.
        certificate = serving_certificate(s)
        await _preflight(s)
        app = create_app(s, load_keyring(s, create=True))
        self.server = build_server(s, app, certificate)

    async def run(self) -> None:
        server = self.server
        assert server is not None
        serving = asyncio.create_task(server.serve(), name="uvicorn")
        stopping = asyncio.create_task(self.stopping.wait())
        s = self.settings
        certificate = server.certificate
        log.info(
            "registry on %s://%s:%d (OpenAPI at /docs), %s, database %s",
            s.scheme,
            s.registry_host,
            s.registry_port,
            "plain HTTP" if certificate is None else f"certificate {certificate.describe()}",
            s.describe(),
        )
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        server.should_exit = True
        try:
            await serving
        except SystemExit:  # uvicorn's answer to a port it cannot bind
            raise RegistryError(
                f"cannot serve on {s.registry_host}:{s.registry_port} (see the line above)"
            ) from None


class RegistryServer(uvicorn.Server):
    """uvicorn, with the certificate checked for a change once a second (on uvicorn's tick) and
    without signal handlers of its own."""

    #: uvicorn ticks every 0.1 s; the certificate's files are looked at every 10th tick.
    CERTIFICATE_EVERY_TICKS = 10

    def __init__(self, config: uvicorn.Config, certificate: ServingCertificate | None) -> None:
        super().__init__(config)
        self.certificate = certificate

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the service lifecycle owns SIGTERM/SIGINT

    async def on_tick(self, counter: int) -> bool:
        if self.certificate is not None and counter % self.CERTIFICATE_EVERY_TICKS == 0:
            self.certificate.refresh()
        return await super().on_tick(counter)


def serving_certificate(settings: RegistrySettings) -> ServingCertificate | None:
    """The certificate to serve, loaded (`TlsError` when missing or unloadable); None, with a
    warning, when `registry_plain_http` asks for plain HTTP."""
    if settings.registry_plain_http:
        log.warning(
            "serving plain HTTP (FLEETPULSE_REGISTRY_PLAIN_HTTP): passwords and bearer tokens "
            "cross the network readable; use it only behind a proxy on this host that "
            "terminates TLS"
        )
        return None
    return ServingCertificate(settings.tls_cert_path, settings.tls_key_path)


def build_server(
    settings: RegistrySettings, app: ASGIApp, certificate: ServingCertificate | None
) -> RegistryServer:
    """uvicorn serving `app` with the security headers, over HTTPS with `certificate` (its
    context, reloaded in place when the files change), or plain HTTP when it is None."""
    context = certificate.context if certificate is not None else None
    config = uvicorn.Config(
        SecurityHeaders(app, hsts=context is not None),
        host=settings.registry_host,
        port=settings.registry_port,
        ssl_context_factory=None if context is None else (lambda _config, _default: context),
        log_config=None,  # the command line's logging; uvicorn's access lines carry no bodies
        # Requests in progress get most of the stop timeout; the lifespan's shutdown the rest.
        timeout_graceful_shutdown=max(1, int(settings.stop_timeout / 2)),
        server_header=False,
    )
    return RegistryServer(config, certificate)


async def _preflight(settings: RegistrySettings) -> None:
    """Fail with one line, before uvicorn starts, when the database is not ready."""
    conn = await connect(settings)
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
        raise Invalid(f"invalid admin: {describe_validation_error(exc)}") from None
    load_keyring(settings, create=True)
    conn = await connect(settings)
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
    conn = await connect(settings)
    try:
        rows = await reencrypt_all(conn, keyring, keyring)
    finally:
        await conn.close()
    return keyring.current, rows
