"""Security headers on every answer of the registry, and the Content-Security-Policy pieces its
HTML pages build theirs from.

`SecurityHeaders` wraps the whole application at the server (outside FastAPI's own error
handling, so even an answer to a crash carries them) and adds, unless the answer already has
one: `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer`,
`Content-Security-Policy: POLICY`, and `Strict-Transport-Security` when serving HTTPS. An HTML
page that runs its own inline script or style sends its own policy, allowing exactly those by
hash (`source_hash`): the chart (`registry.chart`) and the OpenAPI page (`registry.api.docs`).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The policy of every answer that does not bring its own: nothing from elsewhere, no inline
#: script or style, never in a frame, no <base>, forms only to the API.
POLICY: Final = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
#: A year, the common choice: long enough that a browser which saw the registry once never
#: tries plain HTTP with it again, short enough to move off a name without waiting for ever.
HSTS_SECONDS: Final = 365 * 24 * 3600


def source_hash(text: str) -> str:
    """The CSP source that allows the inline script or style element whose text is `text`."""
    digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    return f"'sha256-{digest}'"


class SecurityHeaders:
    """Adds the security headers to every HTTP answer of `app` that lacks them."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.headers = {
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": POLICY,
        }
        if hsts:
            self.headers["Strict-Transport-Security"] = f"max-age={HSTS_SECONDS}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)
