"""Request-body size limits, enforced before a body is read (a pure ASGI middleware).

* A body declared (`Content-Length`) larger than `body_max_bytes` is answered **413** at once, unread.
* A body larger than `body_max_bytes_unauthenticated` needs valid credentials (`Authorization: Token <key>`
  or `X-Shopify-Access-Token`), looked up *before* the body is read: without them the answer is **413**,
  unread. So a caller without a token can never make the API buffer more than the small cap.
* A body without `Content-Length` (`Transfer-Encoding: chunked`) is counted while the application reads
  it; the read that crosses the applicable cap is cut off and the answer is the same 413 (whatever the
  application made of the interrupted read is discarded).

The 413 body speaks the dialect of the path: `{"detail", "code": "request_too_large"}` (Akinon) or
`{"errors": "..."}` under `/admin/api/` (Shopify). `Connection: close` tells the client that the rest of
its body will not be read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cancelflow.api import errors
from cancelflow.config import get_settings

Authenticator = Callable[[Headers], Awaitable[bool]]


class _BodyTooLarge(Exception):
    """Raised inside the application's `receive` when a streamed body crosses its cap."""


async def has_valid_credentials(headers: Headers) -> bool:
    """A token the API would accept, in either header style (looked up in a worker thread: it is I/O)."""
    from cancelflow.api.auth import lookup

    parts = headers.get("authorization", "").split()
    key = (
        parts[1] if len(parts) == 2 and parts[0].lower() == "token" else headers.get("x-shopify-access-token")
    )
    if not key or not key.strip():
        return False
    principal = await anyio.to_thread.run_sync(lookup, key.strip())
    return principal is not None


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, authenticate: Authenticator = has_valid_credentials) -> None:
        self.app = app
        self.authenticate = authenticate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        small, large = settings.body_max_bytes_unauthenticated, settings.body_max_bytes
        headers = Headers(scope=scope)
        declared = _content_length(headers)
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if (declared is None and not chunked) or (declared is not None and declared <= small):
            await self.app(scope, receive, send)  # no body, or a small one the server stops at its length
            return
        if declared is not None and declared > large:
            await _too_large(scope, large, authenticated=True)(scope, receive, send)
            return
        authenticated = await self.authenticate(headers)
        cap = large if authenticated else small
        if declared is not None:
            if declared > cap:
                await _too_large(scope, cap, authenticated=authenticated)(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        await self._streamed(scope, receive, send, cap, authenticated=authenticated)

    async def _streamed(
        self, scope: Scope, receive: Receive, send: Send, cap: int, *, authenticated: bool
    ) -> None:
        received = 0
        exceeded = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    exceeded = True
                    raise _BodyTooLarge(f"request body over {cap} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the application's answer to the cut-off read is replaced by the 413 below
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
            # the cut-off read surfaced as an error in the application: answered below
        if exceeded and not started:
            await _too_large(scope, cap, authenticated=authenticated)(scope, receive, send)


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    try:
        return max(0, int(value))
    except ValueError:
        return None  # the server refuses a malformed length before the application runs


def _too_large(scope: Scope, cap: int, *, authenticated: bool) -> Any:
    if authenticated:
        detail = f"Request body too large: at most {cap} bytes."
    else:
        detail = f"Request body too large: at most {cap} bytes without valid credentials."
    headers = {"Connection": "close"}
    if str(scope.get("path", "")).startswith(errors.SHOPIFY_PREFIX):
        return errors.shopify(413, detail, headers)
    return errors.akinon(413, {"detail": detail, "code": "request_too_large"}, headers)


__all__ = ["BodyLimitMiddleware", "has_valid_credentials"]
