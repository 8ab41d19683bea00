"""GET /docs, the OpenAPI page: FastAPI's Swagger UI page under a Content-Security-Policy that
allows exactly what the page loads, and nothing more.

The page loads Swagger UI's script and style sheet from jsDelivr (FastAPI's defaults) and
FastAPI's favicon, runs one inline script (allowed by its hash), fetches `/openapi.json` and,
for "Try it out", the API itself. Swagger UI sets inline styles as it renders and shows icons
as `data:` images, so this page, and only this one, allows those. The online validator badge
is off (it would fetch from validator.swagger.io), and there is no OAuth2 redirect page: the
API's tokens come from `POST /login`. ReDoc is not served.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from registry.headers import source_hash

#: Where the page's script and style sheet come from (FastAPI's defaults).
SCRIPT_URL: Final = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"
STYLE_URL: Final = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"
FAVICON_URL: Final = "https://fastapi.tiangolo.com/img/favicon.png"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def docs_page(app: FastAPI) -> tuple[str, str]:
    """The page for `app`'s OpenAPI document, and its Content-Security-Policy."""
    assert app.openapi_url is not None
    page = get_swagger_ui_html(
        openapi_url=app.openapi_url,
        title=f"{app.title} - Swagger UI",
        swagger_js_url=SCRIPT_URL,
        swagger_css_url=STYLE_URL,
        swagger_favicon_url=FAVICON_URL,
        oauth2_redirect_url=None,
        swagger_ui_parameters={"validatorUrl": None},
    )
    html = bytes(page.body).decode()
    inline = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_origin(SCRIPT_URL)} {' '.join(source_hash(s) for s in inline)}",
            f"style-src {_origin(STYLE_URL)} 'unsafe-inline'",
            f"img-src 'self' data: {_origin(FAVICON_URL)}",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ]
    )
    return html, policy


def add_docs(app: FastAPI, path: str = "/docs") -> None:
    """Serve the page at `path` (the app is made with `docs_url=None`, `redoc_url=None`)."""
    html, policy = docs_page(app)

    async def docs(request: Request) -> HTMLResponse:
        return HTMLResponse(html, headers={"Content-Security-Policy": policy})

    app.add_route(path, docs, include_in_schema=False)
