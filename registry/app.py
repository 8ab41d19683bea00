"""The registry's FastAPI application: routes, error answers, lifespan (pool, status consumer).

Error answers are 4xx and never echo what was sent: validation errors name the field and say
what is wrong without the input (a password must not come back in an error), the refusals of
`registry.accounts` and `registry.inventory` get their status from `REFUSALS` (the one place
that chooses it), other constraint violations become 422, an unreachable database 503.
The security headers wrap the application at the server (`registry.headers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import asyncpg
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry import store
from registry.api.deps import Registry
from registry.api.docs import add_docs
from registry.api.main import ROUTERS
from registry.crypto import Keyring
from registry.errors import (
    Conflict,
    Forbidden,
    Invalid,
    LockedOut,
    NotFound,
    RegistryError,
    Unauthenticated,
    WrongPassword,
)
from registry.security import Passwords
from registry.settings import RegistrySettings
from registry.status import StatusConsumer
from runtime import postgres
from runtime.postgres import POSTGRES_ERRORS

log = logging.getLogger(__name__)

#: The answer to each refusal of an account or inventory operation.
REFUSALS: Final[dict[type[RegistryError], int]] = {
    WrongPassword: status.HTTP_400_BAD_REQUEST,
    Unauthenticated: status.HTTP_401_UNAUTHORIZED,
    Forbidden: status.HTTP_403_FORBIDDEN,
    NotFound: status.HTTP_404_NOT_FOUND,
    Conflict: status.HTTP_409_CONFLICT,
    Invalid: status.HTTP_422_UNPROCESSABLE_CONTENT,
    LockedOut: status.HTTP_429_TOO_MANY_REQUESTS,
}
#: Seconds between purges of expired sessions and stale failed-login counts.
HOUSEKEEPING_EVERY = 600.0
#: Largest request body read; the biggest valid one is a few kilobytes.
MAX_BODY_BYTES = 1 << 20


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413 before they are held in memory."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            response = _error(
                status.HTTP_413_CONTENT_TOO_LARGE, f"request body over {self.limit} bytes"
            )
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # a chunked body that did not declare its length
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "request body too large")
            return message

        await self.app(scope, limited, send)


def _error(code: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=code)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in errors
    )
    return _error(status.HTTP_422_UNPROCESSABLE_CONTENT, detail, errors=errors)


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RegistryError)
    code = next(REFUSALS[c] for c in type(exc).__mro__ if c in REFUSALS)
    headers = {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, LockedOut):
        headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)


async def _integrity_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, asyncpg.IntegrityConstraintViolationError)
    return _error(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        f"refused by the database constraint {exc.constraint_name or exc.sqlstate}",
    )


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, asyncpg.DataError)
    # PostgreSQL's message names the type, not the value sent.
    return _error(status.HTTP_422_UNPROCESSABLE_CONTENT, f"invalid value: {exc.sqlstate}")


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", type(exc).__name__)
    return _error(status.HTTP_503_SERVICE_UNAVAILABLE, "database unavailable; try again")


async def _housekeeping(registry: Registry) -> None:
    while True:
        try:
            sessions, failures = await store.purge_expired(
                registry.pool, registry.settings.login_window
            )
            if sessions or failures:
                log.info("purged %d expired sessions, %d stale login counts", sessions, failures)
        except POSTGRES_ERRORS as exc:
            log.warning("housekeeping failed (%s); next try later", type(exc).__name__)
        await asyncio.sleep(HOUSEKEEPING_EVERY)


def create_app(
    settings: RegistrySettings,
    keyring: Keyring,
    passwords: Passwords | None = None,
) -> FastAPI:
    """The application; its lifespan opens the pool and runs the status consumer."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await postgres.create_pool(
            settings, min_size=1, max_size=settings.registry_pool_size
        )
        # Each shutdown step gets a quarter of the stop timeout (uvicorn's drain has a half).
        step_timeout = settings.stop_timeout / 4
        registry = Registry(settings, pool, keyring, passwords or Passwords())
        app.state.registry = registry
        consumer: StatusConsumer | None = None
        task: asyncio.Task[None] | None = None
        if settings.registry_consume_status:
            consumer = StatusConsumer(settings, pool)
            task = asyncio.create_task(consumer.run(), name="status-consumer")
        housekeeping = asyncio.create_task(_housekeeping(registry), name="housekeeping")
        try:
            yield
        finally:
            housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await housekeeping
            if consumer is not None and task is not None:
                consumer.stop()
                try:
                    await asyncio.wait_for(task, step_timeout)
                except TimeoutError:
                    log.warning("status consumer did not stop within %.0f s", step_timeout)
            await asyncio.wait_for(pool.close(), step_timeout)

    app = FastAPI(
        title="FleetPulse registry",
        summary="Users, the server inventory and metric reads.",
        version="1.0.0",
        lifespan=lifespan,
        docs_url=None,  # served by `add_docs`, with the page's own Content-Security-Policy
        redoc_url=None,
    )
    app.add_middleware(BodyLimit)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for refusal in REFUSALS:
        app.add_exception_handler(refusal, _refused)
    app.add_exception_handler(asyncpg.IntegrityConstraintViolationError, _integrity_error)
    app.add_exception_handler(asyncpg.DataError, _data_error)
    for unavailable in (
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.CannotConnectNowError,
        asyncpg.TooManyConnectionsError,
        OSError,
    ):
        app.add_exception_handler(unavailable, _unavailable)

    for router in ROUTERS:
        app.include_router(router)
    add_docs(app)
    app.mount("/metrics", make_asgi_app())
    return app
