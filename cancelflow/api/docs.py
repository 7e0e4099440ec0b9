"""`/api/docs/`: Swagger UI served from this process, so the docs work on a network without a CDN.

FastAPI's default page loads Swagger UI from jsDelivr; the same files ship in the `fastapi-offline`
wheel and are mounted here under `/api/docs/static/`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/api/docs/"
STATIC_URL = "/api/docs/static"
STATIC_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"


def install(app: FastAPI) -> None:
    """Serve the docs page and its assets; the app must be created with ``docs_url=None``."""
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="swagger-ui-static")
    openapi_url = app.openapi_url or "/api/schema/"

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_URL}/favicon.png",
        )
        page.headers["Content-Security-Policy"] = docs_csp(bytes(page.body).decode())
        return page


def docs_csp(html: str) -> str:
    """The docs page's policy: scripts from this server and the page's own inline start-up script (by
    hash), styles from here and inline (Swagger UI sets style attributes), images from here and `data:`,
    requests ("Try it out", the schema) to this server only."""
    inline = [f"'sha256-{_sha256(script)}'" for script in _INLINE_SCRIPT.findall(html)]
    return "; ".join(
        [
            "default-src 'none'",
            " ".join(["script-src 'self'", *inline]),
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )


_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
