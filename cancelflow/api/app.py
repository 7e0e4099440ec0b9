"""The FastAPI application: `uvicorn --factory cancelflow.api.app:create_app`.

Routers carry their own prefix, tags and auth dependency; errors are mapped once, by path, in
`api.errors`, so a new router (e.g. the Akinon `cancellation_requests` one under `/api/v1/`) plugs in
with one line in `routers()` below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI

from cancelflow import __version__, console
from cancelflow.api import bulk_jobs as jobs_api
from cancelflow.api import cancellation_requests, docs, errors, fulfillment, health, metrics, orders
from cancelflow.api import exports as exports_api
from cancelflow.api import graphql as graphql_api
from cancelflow.api import tags as tags_api
from cancelflow.api import textcheck as textcheck_api
from cancelflow.api import users as users_api
from cancelflow.api import webhooks as webhooks_api
from cancelflow.api.limits import BodyLimitMiddleware
from cancelflow.api.schemas.fulfillment import OUTGOING_REQUESTS_NOTE
from cancelflow.api.security_headers import SecurityHeadersMiddleware
from cancelflow.api.shopify_limits import ShopifyCallLimitMiddleware
from cancelflow.api.throttling import install as install_throttling
from cancelflow.config import get_settings
from cancelflow.config.logging import configure_logging

DESCRIPTION = f"""
Order-cancellation workflow service.

* **Akinon / Omnitron style** under `/api/v1/` with `Authorization: Token <key>`; errors are DRF bodies
  (`{{"detail", "code"}}`, `{{"<field>": ["msg"], "code"}}`).
* **Shopify Admin REST** fulfillment-order cancellation requests under `/admin/api/{{version}}/` for
  versions {", ".join(f"`{v}`" for v in fulfillment.VERSIONS)}, with `X-Shopify-Access-Token: <key>`;
  every response carries `X-Shopify-API-Version`; errors are `{{"errors": ...}}`. Calls are limited per
  token by Shopify's leaky bucket (40 calls, leaking 2 per second by default): every answer carries
  `X-Shopify-Shop-Api-Call-Limit: used/size`, and a call over the limit is a 429 with `Retry-After`.
  {OUTGOING_REQUESTS_NOTE}
* **Shopify GraphQL Admin** for the same fulfillment orders at `POST /admin/api/{{version}}/graphql.json`
  for versions `2024-01` to `2027-01` and `unstable`, same token.

Malformed JSON is a 400 in both dialects. Text anywhere in a request (body, query, path, headers) must
not contain NUL or unpaired surrogates (`\\u0000`, `\\ud800`): a 400 (Shopify: 422) naming the field.
"""


def routers() -> list[APIRouter]:
    return [
        health.router,
        orders.router,
        fulfillment.router,
        graphql_api.router,
        metrics.router,
        # Before the cancellation-request routers: `filter_by_tags/` must not be taken for an `{id}`.
        tags_api.router,
        tags_api.channel_router,
        jobs_api.router,
        exports_api.router,
        users_api.router,
        webhooks_api.router,
        cancellation_requests.router,
        cancellation_requests.channel_router,
    ]


def _document_errors_as_served(app: FastAPI) -> None:
    """FastAPI documents a 422 `HTTPValidationError` on every route with parameters; the Akinon routes
    answer validation errors with a 400 instead (documented per router), so that 422 is dropped."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path, operations in schema.get("paths", {}).items():
                if path.startswith(errors.SHOPIFY_PREFIX):
                    continue
                for operation in operations.values():
                    response = operation.get("responses", {}).get("422", {})
                    ref = (
                        response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
                    )
                    if ref == "#/components/schemas/HTTPValidationError":
                        del operation["responses"]["422"]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Sync endpoints and dependencies run on as many threads as the process keeps database connections
    (`CANCELFLOW_DB_POOL_SIZE`; anyio's default is 40): more threads would only wait for a connection,
    or open and close extra ones per request."""
    anyio.to_thread.current_default_thread_limiter().total_tokens = get_settings().db_pool_size
    yield


def create_app() -> FastAPI:
    settings = get_settings()
    configure_logging(settings)
    app = FastAPI(
        lifespan=lifespan,
        title="cancelflow",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/api/schema/",
        docs_url=None,  # served by api.docs from local files: no CDN needed
        redoc_url=None,
        # Before every route's own dependencies (auth included): text that cannot be stored goes no further.
        dependencies=[Depends(textcheck_api.refuse_bad_text)],
    )
    errors.install(app)
    install_throttling(app)
    docs.install(app)
    app.add_middleware(BodyLimitMiddleware)  # body sizes checked before any body is read (api.limits)
    # Shopify's REST call limit, outside the body limit so its 413s are counted and carry the header too.
    app.add_middleware(ShopifyCallLimitMiddleware)
    app.add_middleware(fulfillment.ShopifyVersionHeaderMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
    for router in routers():
        app.include_router(router)
    console.install(app)  # the staff console's pages under /console/ (not in the OpenAPI document)
    _document_errors_as_served(app)
    return app
