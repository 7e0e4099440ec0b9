"""Shopify's GraphQL Admin API, the fulfillment-order cancellation subset: `POST /admin/api/{version}/graphql.json`.

The same tokens as the REST twin (`X-Shopify-Access-Token`; a missing or unknown one is the REST 401 body,
a storefront token the REST 403). The body is `{"query", "variables", "operationName"}`, the last two
possibly `null`; the answer is a GraphQL response (`data`, `errors`, `extensions`), always 200 once the
request is read. A request goes parse -> validate -> query limits -> requested cost (over the single query
maximum: `MAX_COST_EXCEEDED`) -> the token's cost bucket (`THROTTLED` when it does not fit: nothing runs)
-> execute -> actual cost -> the unused points given back -> `extensions.cost`. It executes in one
database transaction (committed when the answer is built, as for REST), against the schema of its version
(`cancelflow.graphql.schema`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from graphql import DocumentNode, GraphQLError, execute_sync, parse, validate
from sqlalchemy.orm import Session

from cancelflow.api.auth import Principal, ShopifyReader
from cancelflow.api.deps import DbSession, admin_api_version
from cancelflow.api.errors import SHOPIFY_RESPONSES, body_parse_error, parse_error_reason
from cancelflow.api.shopify_limits import bucket_key
from cancelflow.config import get_settings
from cancelflow.graphql import cost, limits
from cancelflow.graphql.resolvers import Caller, Context
from cancelflow.graphql.schema import SCHEMAS
from cancelflow.graphql.versions import VERSIONS

VERSION_HEADER: Final = "X-Shopify-API-Version"
CACHED_DOCUMENTS: Final = 512
CACHED_QUERY_LENGTH: Final = 8_000  # characters: at most some 4 MB of remembered text
_MISSING_QUERY: Final = {"errors": {"query": "Required parameter missing or invalid"}}


graphql_version: Final = admin_api_version(VERSIONS)


async def raw_body(request: Request) -> bytes:
    return await request.body()


class BadRequest(Exception):
    """A body that is not a GraphQL request: 400 with Shopify's `{"errors": {...}}`."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.body = body


def read_request(raw: bytes) -> tuple[str, dict[str, Any] | None, str | None]:
    """`query`, `variables` and `operationName` of a GraphQL-over-HTTP body (`null`s accepted)."""
    data = json.loads(raw) if raw else None
    if not isinstance(data, dict) or not isinstance(data.get("query"), str) or not data["query"].strip():
        raise BadRequest(_MISSING_QUERY)
    variables = data.get("variables")
    if variables is not None and not isinstance(variables, dict):
        raise BadRequest({"errors": {"variables": "must be a JSON object or null"}})
    operation_name = data.get("operationName")
    if operation_name is not None and not isinstance(operation_name, str):
        raise BadRequest({"errors": {"operationName": "must be a string or null"}})
    return data["query"], variables, operation_name


def caller_of(principal: Principal) -> Caller:
    return Caller(is_staff=principal.is_staff, fulfillment_service_id=principal.fulfillment_service_id)


def _parse_and_validate(version: str, query: str) -> tuple[DocumentNode | None, tuple[Any, ...]]:
    try:
        document = parse(query, max_tokens=cost.MAX_TOKENS)
    except GraphQLError as error:
        return None, (error.formatted,)
    errors = validate(SCHEMAS[version], document)
    if errors:
        return None, tuple(e.formatted for e in errors)
    return document, ()


_checked_cached = lru_cache(maxsize=CACHED_DOCUMENTS)(_parse_and_validate)


def checked(version: str, query: str) -> tuple[DocumentNode | None, tuple[Any, ...]]:
    """The document, once parsed and validated against `version`'s schema, or the request errors.

    Apps send the same few documents over and over (variables change, the text does not), and validation
    is the dearest step before execution: short documents are remembered (neither graphql-core nor the
    cost walk changes a document)."""
    if len(query) > CACHED_QUERY_LENGTH:
        return _parse_and_validate(version, query)
    return _checked_cached(version, query)


def run(
    version: str,
    session: Session,
    caller: Caller,
    token_key: str,
    query: str,
    variables: dict[str, Any] | None,
    operation_name: str | None,
) -> dict[str, Any]:
    """One GraphQL request, as Shopify runs it: a response body with `extensions.cost` on every answer.
    Parse and validation errors come without `data` (the spec's request errors) and cost nothing."""
    schema = SCHEMAS[version]
    document, request_errors = checked(version, query)
    if document is None:
        status = limits.admit(token_key, 0)[1]  # takes nothing: the caller still sees its bucket
        return {
            "errors": list(request_errors),
            "extensions": {"cost": limits.cost_extension(0, None, status)},
        }
    errors = cost.check_query_limits(schema, document, operation_name, variables)
    requested = 0 if errors else cost.requested_cost(schema, document, operation_name, variables)
    if not errors and requested > get_settings().graphql_max_cost:
        errors = [limits.max_cost_error(requested)]
    if errors:
        status = limits.admit(token_key, 0)[1]  # takes nothing: the caller still sees its bucket
        return refused(errors, requested, status)
    admitted, status = limits.admit(token_key, requested)
    if not admitted:
        return refused([limits.throttled_error()], requested, status)
    result = execute_sync(
        schema,
        document,
        variable_values=variables,
        operation_name=operation_name,
        context_value=Context(session, caller),
    )
    for failure in result.errors or ():
        cause = failure.original_error
        if cause is not None and not isinstance(cause, GraphQLError):
            # Not a GraphQL answer: the transaction is rolled back and the error mapped as for REST.
            raise cause
    actual = cost.actual_cost(schema, document, operation_name, variables, result.data)
    status = limits.settle(token_key, requested, actual)
    return {**result.formatted, "extensions": {"cost": limits.cost_extension(requested, actual, status)}}


def refused(errors: list[GraphQLError], requested: int, status: limits.ThrottleStatus) -> dict[str, Any]:
    """A query that does not run: no `data`, `actualQueryCost` null."""
    return {
        "errors": [e.formatted for e in errors],
        "extensions": {"cost": limits.cost_extension(requested, None, status)},
    }


router = APIRouter(
    prefix="/admin/api/{version}",
    tags=["GraphQL Admin API"],
    dependencies=[Depends(graphql_version)],
    responses=SHOPIFY_RESPONSES,
)


@router.post(
    "/graphql.json",
    summary="GraphQL Admin API",
    description=(
        "Shopify's GraphQL Admin API for fulfillment orders and their cancellation requests: "
        "`fulfillmentOrder`, `assignedFulfillmentOrders` (on `shop` before 2024-07), `node`/`nodes`, `shop`, "
        "and the mutations `fulfillmentOrderSubmitCancellationRequest` (merchant token), "
        "`fulfillmentOrderAcceptCancellationRequest` and `fulfillmentOrderRejectCancellationRequest` "
        '(the assigned service\'s token). Body: `{"query", "variables", "operationName"}`. '
        "A refused mutation is a `userErrors` entry; the schema answers introspection."
    ),
    response_model=None,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["query"],
                        "properties": {
                            "query": {"type": "string", "description": "The GraphQL document."},
                            "variables": {"type": ["object", "null"], "description": "Its variables."},
                            "operationName": {
                                "type": ["string", "null"],
                                "description": "The operation to run, when the document has several.",
                            },
                        },
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": "A GraphQL response: `data`, `errors`, `extensions.cost`.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "400": {"description": "No usable `query`, or a body that is not JSON."},
        },
    },
)
def graphql_endpoint(
    version: str,
    request: Request,
    principal: ShopifyReader,
    session: DbSession,
    raw: Annotated[bytes, Depends(raw_body)],
) -> JSONResponse:
    try:
        query, variables, operation_name = read_request(raw)
    except (ValueError, RecursionError) as exc:
        return body_parse_error(request, parse_error_reason(exc))
    except BadRequest as exc:
        return JSONResponse(exc.body, status_code=400)
    token = request.headers.get("X-Shopify-Access-Token", "").strip()
    body = run(version, session, caller_of(principal), bucket_key(token), query, variables, operation_name)
    return JSONResponse(body, headers={VERSION_HEADER: version})
