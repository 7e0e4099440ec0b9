"""Headers every answer carries: no MIME sniffing, no referrer, no framing, a Content-Security-Policy that
lets an API answer load nothing, and `Cache-Control: no-store` on the API paths, whose answers hold tokens
and personal data that no browser or shared cache may keep. A response that sets one of these itself (the
docs page, with a policy that allows its own scripts) keeps its own value."""

from __future__ import annotations

from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# JSON (and files) only: nothing to run, load, frame or submit.
API_CSP: Final = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
ALWAYS: Final = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", API_CSP),
)
NO_STORE_PREFIXES: Final = ("/api/", "/admin/api/")
# Swagger UI's own files: the same for everyone and large, so they may be cached.
CACHEABLE_PREFIXES: Final = ("/api/docs/static/",)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        no_store = path.startswith(NO_STORE_PREFIXES) and not path.startswith(CACHEABLE_PREFIXES)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in ALWAYS:
                    headers.setdefault(name, value)
                if no_store:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)
