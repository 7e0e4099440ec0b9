"""Shopify's REST call limit under `/admin/api/`: a leaky bucket per access token.

Each call with an `X-Shopify-Access-Token` pours one into the token's bucket (`shopify_rest_bucket_size`,
40), which leaks `shopify_rest_leak_rate` calls per second (2); every answer says how full it is in
`X-Shopify-Shop-Api-Call-Limit: used/size`, errors included. A call that does not fit is answered 429 with
`Retry-After` (seconds, as Shopify writes them: `2.0`) and Shopify's body, before anything else runs. The
GraphQL endpoint (`.../graphql.json`) is limited by query cost instead (`cancelflow.graphql.limits`).

The bucket is keyed by a hash of the token as sent, so the check needs no database (an unknown token gets a
bucket too, and its 401). A call without a token has no bucket: it is a 401 at once. Buckets live in the
throttle store (`services.buckets`), shared by every API replica.
"""

from __future__ import annotations

import hashlib
import math
from typing import Final

import anyio.to_thread
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cancelflow.api import errors
from cancelflow.config import get_settings
from cancelflow.services.buckets import EPSILON, Bucket, get_buckets

CALL_LIMIT_HEADER: Final = "X-Shopify-Shop-Api-Call-Limit"
GRAPHQL_SUFFIX: Final = "/graphql.json"


def rest_bucket() -> Bucket:
    settings = get_settings()
    return Bucket("rest", float(settings.shopify_rest_bucket_size), settings.shopify_rest_leak_rate)


def bucket_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def limited(scope: Scope) -> bool:
    path = str(scope.get("path", ""))
    return path.startswith(errors.SHOPIFY_PREFIX) and not path.endswith(GRAPHQL_SUFFIX)


def retry_after(seconds: float) -> str:
    """Shopify's form (`2.0`), rounded up to the tenth so a client that waits it is admitted."""
    return f"{max(0.1, math.ceil(seconds * 10 - EPSILON) / 10):.1f}"


class ShopifyCallLimitMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not limited(scope):
            await self.app(scope, receive, send)
            return
        token = Headers(scope=scope).get("x-shopify-access-token", "").strip()
        if not token:
            await self.app(scope, receive, send)
            return
        spec = rest_bucket()
        level = await anyio.to_thread.run_sync(get_buckets().take, spec, bucket_key(token), 1.0)
        used = min(int(spec.capacity), max(1, math.ceil(level.level - EPSILON)))
        header = f"{used}/{int(spec.capacity)}"
        if not level.admitted:
            rate = f"{spec.rate:g}"
            response = errors.shopify(
                429,
                f"Exceeded {rate} calls per second for api client. Reduce request rates to resume "
                "uninterrupted service.",
                {CALL_LIMIT_HEADER: header, "Retry-After": retry_after(spec.wait_for(level.level, 1.0))},
            )
            await response(scope, receive, send)
            return

        async def send_with_limit(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[CALL_LIMIT_HEADER] = header
            await send(message)

        await self.app(scope, receive, send_with_limit)


__all__ = ["CALL_LIMIT_HEADER", "ShopifyCallLimitMiddleware", "bucket_key", "rest_bucket", "retry_after"]
