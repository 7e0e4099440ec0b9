"""429 for `Throttled`, in the dialect of the path: DRF's `{"detail", "code": "throttled"}` under `/api/`,
Shopify's `{"errors": "..."}` under `/admin/api/`, with `Retry-After` in seconds either way."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cancelflow.api.errors import akinon, is_shopify, shopify
from cancelflow.api.schemas.errors import AkinonDetail
from cancelflow.errors import Throttled

THROTTLED_RESPONSE: dict[str, Any] = {
    "model": AkinonDetail,
    "description": "Too many attempts: wait `Retry-After` seconds.",
    "headers": {
        "Retry-After": {
            "description": "Seconds until an attempt is counted again.",
            "schema": {"type": "integer"},
        }
    },
}


def throttled(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Throttled)
    headers = {"Retry-After": str(exc.retry_after)}
    if is_shopify(request):
        return shopify(429, exc.message, headers)
    return akinon(429, {"detail": exc.message, "code": exc.code}, headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(Throttled, throttled)
