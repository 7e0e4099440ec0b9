"""The staff console: server-rendered pages under `/console/`, served by the API process.

Pages are Jinja2 templates (`templates/`) over the same services as the API (`services.queries`,
`services.request_view`); htmx (`static/htmx.min.js`, vendored: no CDN) only enhances them, so every read
page works without JavaScript. Sign-in is a server-side session (`services.console_sessions`) in an HttpOnly
cookie; API tokens give no access here.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from cancelflow.console import bulk, overview, pages, queues, views, web

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Mount the console's pages and files on the API application."""
    web.install_handlers(app)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.include_router(pages.router)
    app.include_router(queues.router)
    app.include_router(overview.router)
    app.include_router(views.router)
    app.include_router(bulk.router)
