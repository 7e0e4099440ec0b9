"""One mapping from the shared error hierarchy to HTTP, in the dialect of the path that failed.

Under `/admin/api/` the bodies are Shopify's (`{"errors": "..."}` or `{"errors": {"field": ["msg"]}}`);
everywhere else they are Akinon's (DRF: `{"detail", "code"}`, `{"<field>": ["msg"], "code"}`,
`{"non_field_errors": [...], "code"}`). Routers raise `cancelflow.errors`; they never build error bodies.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import psycopg2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cancelflow.api.schemas.errors import AkinonDetail, AkinonValidationError, ShopifyError
from cancelflow.db import unavailable
from cancelflow.errors import (
    AlreadyHandled,
    CancelflowError,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    InvalidTransition,
    NotFound,
    TooManyJobs,
    TransientError,
)

log = logging.getLogger(__name__)

SHOPIFY_PREFIX = "/admin/api/"
SHOPIFY_UNAUTHORIZED = "[API] Invalid API key or access token (unrecognized login or wrong password)"
# Seconds a client waits before retrying while the database is away (it comes back, or a pool reconnects).
DATABASE_RETRY_AFTER = "1"
SHOPIFY_BASE_FIELD = "base"  # Rails' key for errors that belong to no field
AKINON_NON_FIELD = "non_field_errors"
_PARAM_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})


class Unauthenticated(Exception):
    """No usable credentials: 401 in the dialect of the path."""

    def __init__(self, detail: str, *, code: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code


# --- documented bodies (OpenAPI; the bodies themselves are in `api.schemas.errors`) -------------------------

SHOPIFY_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ShopifyError, "description": "Malformed JSON body."},
    401: {"model": ShopifyError, "description": "Missing or unknown `X-Shopify-Access-Token`."},
    403: {"model": ShopifyError, "description": "The token's kind may not call this endpoint."},
    404: {"model": ShopifyError, "description": "Unknown API version or fulfillment order (or not yours)."},
    422: {"model": ShopifyError, "description": "Invalid parameters or a state that does not allow it."},
    429: {
        "model": ShopifyError,
        "description": "The token's call limit is reached (`X-Shopify-Shop-Api-Call-Limit`): wait `Retry-After`.",
        "headers": {
            "Retry-After": {"description": "Seconds to wait, e.g. `2.0`.", "schema": {"type": "string"}},
            "X-Shopify-Shop-Api-Call-Limit": {
                "description": "Calls in the token's bucket / its size (on every answer), e.g. `40/40`.",
                "schema": {"type": "string"},
            },
        },
    },
}

AKINON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": AkinonValidationError, "description": "Invalid data (field errors) or malformed JSON."},
    401: {"model": AkinonDetail, "description": "Missing or unknown `Authorization: Token <key>`."},
    403: {"model": AkinonDetail, "description": "The token may not perform this action."},
    404: {"model": AkinonDetail, "description": "Not found."},
}


# --- building responses -----------------------------------------------------------------------------------


def is_shopify(request: Request) -> bool:
    return request.url.path.startswith(SHOPIFY_PREFIX)


def shopify(
    status: int, errors: str | dict[str, list[str]], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"errors": errors}, status_code=status, headers=headers)


def akinon(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _not_found(request: Request) -> JSONResponse:
    return shopify(404, "Not Found") if is_shopify(request) else akinon(404, {"detail": "Not found."})


def cancelflow_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CancelflowError)
    as_shopify = is_shopify(request)
    if isinstance(exc, NotFound):
        return _not_found(request)
    if isinstance(exc, Invalid):
        if as_shopify:
            return shopify(422, dict(exc.field_errors) if exc.field_errors else exc.message)
        if exc.field_errors:
            return akinon(400, {**exc.field_errors, "code": exc.code})
        return akinon(400, {AKINON_NON_FIELD: [exc.message], "code": exc.code})
    if isinstance(exc, InvalidTransition):
        # Akinon's "the action is not allowed" is a 400; Shopify's wrong state a 422.
        if as_shopify:
            return shopify(422, exc.message)
        return akinon(400, {AKINON_NON_FIELD: [exc.message], "code": exc.code})
    if isinstance(exc, Forbidden):
        if as_shopify:
            return shopify(403, exc.message)
        return akinon(403, {"detail": exc.message, "code": "permission_denied"})
    if isinstance(exc, Gone):
        return (
            shopify(410, exc.message)
            if as_shopify
            else akinon(410, {"detail": exc.message, "code": exc.code})
        )
    if isinstance(exc, TooManyJobs):
        headers = {"Retry-After": str(exc.retry_after)}
        if as_shopify:
            return shopify(429, exc.message, headers)
        return akinon(429, {"detail": exc.message, "code": exc.code}, headers)
    if isinstance(exc, Conflict | AlreadyHandled):
        return (
            shopify(422, exc.message)
            if as_shopify
            else akinon(409, {"detail": exc.message, "code": exc.code})
        )
    if isinstance(exc, TransientError):
        headers = {"Retry-After": "1"}
        if as_shopify:
            return shopify(503, exc.message, headers)
        return akinon(503, {"detail": exc.message, "code": exc.code}, headers)
    # PermanentError and anything else the domain refuses: the request cannot succeed as sent.
    return shopify(422, exc.message) if as_shopify else akinon(400, {"detail": exc.message, "code": exc.code})


def unauthenticated(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Unauthenticated)
    if is_shopify(request):
        return shopify(401, SHOPIFY_UNAUTHORIZED)
    return akinon(401, {"detail": exc.detail, "code": exc.code}, {"WWW-Authenticate": "Token"})


def _field_name(loc: tuple[Any, ...], non_field: str) -> str:
    parts = loc[1:] if loc and loc[0] in _PARAM_SOURCES else loc
    return ".".join(str(part) for part in parts) or non_field


def _message(error: dict[str, Any], *, as_shopify: bool) -> str:
    if error.get("type") == "missing":
        return "can't be blank" if as_shopify else "This field is required."
    return str(error.get("msg", "invalid"))


def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's parameter validation: a bad path is a 404, bad JSON a 400, the rest field errors."""
    assert isinstance(exc, RequestValidationError)
    errors: list[dict[str, Any]] = list(exc.errors())
    as_shopify = is_shopify(request)
    if any(tuple(e.get("loc", ()))[:1] == ("path",) for e in errors):
        # `/fulfillment_orders/abc.json` names no resource, as a router without typed ids would answer.
        return _not_found(request)
    parse_error = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if parse_error is not None:
        return body_parse_error(request, (parse_error.get("ctx") or {}).get("error", "invalid JSON"))
    non_field = SHOPIFY_BASE_FIELD if as_shopify else AKINON_NON_FIELD
    fields: dict[str, list[str]] = {}
    for error in errors:
        fields.setdefault(_field_name(tuple(error.get("loc", ())), non_field), []).append(
            _message(error, as_shopify=as_shopify)
        )
    if as_shopify:
        return shopify(422, fields)
    return akinon(400, {**fields, "code": "invalid"})


# FastAPI's answer to a body `json.loads` failed on other than by a syntax error (too deep, not UTF-8).
_UNPARSED_BODY = "There was an error parsing the body"


def parse_error_reason(exc: BaseException | None) -> str:
    """Why a JSON body could not be read, in a few words that echo none of it."""
    if isinstance(exc, json.JSONDecodeError):
        return exc.msg
    if isinstance(exc, RecursionError):
        return "Nesting too deep"
    if isinstance(exc, UnicodeDecodeError):
        return "Not valid UTF-8"
    return "Invalid JSON"


def body_parse_error(request: Request, reason: str) -> JSONResponse:
    """A body that is not JSON: DRF's `parse_error` body, or Shopify's 400 `{"errors": "..."}`."""
    message = f"JSON parse error - {reason}"
    if is_shopify(request):
        return shopify(400, message)
    return akinon(400, {"detail": message, "code": "parse_error"})


def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors: unknown route (404), wrong method (405), an unreadable body (400)."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 404:
        return _not_found(request)
    if exc.status_code == 400 and exc.detail == _UNPARSED_BODY:
        return body_parse_error(request, parse_error_reason(exc.__cause__))
    if is_shopify(request):
        return shopify(exc.status_code, str(exc.detail), headers)
    if exc.status_code == 405:
        return akinon(
            405, {"detail": f'Method "{request.method}" not allowed.', "code": "method_not_allowed"}, headers
        )
    return akinon(exc.status_code, {"detail": str(exc.detail), "code": "error"}, headers)


def database_error(request: Request, exc: Exception) -> JSONResponse:
    """A constraint or a value the database refused: bad input the validators let through, never a 500."""
    assert isinstance(exc, IntegrityError | DataError)
    diag = getattr(exc.orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None)
    if isinstance(exc, IntegrityError):
        message = f"The data conflicts with existing data (constraint {constraint or 'unknown'})."
        code = "integrity_error"
    else:
        message = "A value is out of range or malformed for the database."
        code = "invalid_data"
    log.info("database refused the request data: %s", exc.orig)
    if is_shopify(request):
        return shopify(422, {SHOPIFY_BASE_FIELD: [message]})
    return akinon(400, {AKINON_NON_FIELD: [message], "code": code})


def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database is away: a 503 with `Retry-After` in the path's dialect, never a 500. Whatever this
    request had written was rolled back whole (one transaction per unit of work), so a retry is safe."""
    if not unavailable(exc):
        # Handled here, so Starlette's server-error middleware never sees it: log it as it would.
        log.error("unhandled database error on %s %s", request.method, request.url.path, exc_info=exc)
        return server_error(request, exc)
    log.warning("database unavailable: %s %s: %s", request.method, request.url.path, exc)
    headers = {"Retry-After": DATABASE_RETRY_AFTER}
    message = "The database is unavailable; retry shortly."
    if is_shopify(request):
        return shopify(503, message, headers)
    return akinon(503, {"detail": message, "code": "database_unavailable"}, headers)


def server_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette logs and re-raises after this; the body just keeps the dialect of the path.
    if is_shopify(request):
        return shopify(500, "Internal Server Error")
    return akinon(500, {"detail": "A server error occurred.", "code": "error"})


def install(app: FastAPI) -> None:
    """Register every mapping on the app, once; new routers inherit it by their path."""
    app.add_exception_handler(CancelflowError, cancelflow_error)
    app.add_exception_handler(Unauthenticated, unauthenticated)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(IntegrityError, database_error)
    app.add_exception_handler(DataError, database_error)
    # Connection loss, a restart, an exhausted pool; any other driver error stays a 500 (server_error).
    app.add_exception_handler(DBAPIError, database_unavailable)
    app.add_exception_handler(PoolTimeoutError, database_unavailable)
    app.add_exception_handler(psycopg2.OperationalError, database_unavailable)
    app.add_exception_handler(Exception, server_error)
