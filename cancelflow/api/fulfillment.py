"""Shopify's fulfillment-order CancellationRequest API (seed 004), for every version the seed lists.

The merchant (a staff token) sends a cancellation request; the fulfillment service (its own token) pulls
its assigned fulfillment orders and accepts or rejects. The payload keeps the seed's fields in the
seed's order, plus `merchant_requests`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Final, Literal, cast

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse, Response
from pydantic import Field
from pydantic_core import from_json, to_json
from sqlalchemy import BindParameter, Dialect, Executable, Select, Text, TypeDecorator, bindparam
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cancelflow.api.auth import ShopifyReader, ShopifyService, ShopifyStaff
from cancelflow.api.deps import DbSession, admin_api_version
from cancelflow.api.errors import SHOPIFY_RESPONSES
from cancelflow.api.schemas.fulfillment import (
    CancellationRequestBody,
    Destination,
    FulfillmentOrderAction,
    FulfillmentOrderEnvelope,
    FulfillmentOrderList,
    Origin,
)
from cancelflow.config import get_settings
from cancelflow.models import (
    FulfillmentOrder,
)
from cancelflow.models.enums import FORequestStatus, FOStatus
from cancelflow.models.transitions import fulfillment_order_actions
from cancelflow.services import fulfillment_orders as fos
from cancelflow.services import replies, request_view, routing

VERSIONS: Final = ("2020-01", "2020-04", "2020-07", "2020-10", "2021-01", "2021-04", "2021-07", "unstable")
VERSION_HEADER: Final = "X-Shopify-API-Version"
_VERSION_IN_PATH = re.compile(r"^/admin/api/([^/]+)/")
MAX_ID: Final = 2**63 - 1

# --- version -------------------------------------------------------------------------------------------


api_version: Final = admin_api_version(VERSIONS)


class ShopifyVersionHeaderMiddleware:
    """Every response under `/admin/api/<known version>/` says which version served it, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _VERSION_IN_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or match.group(1) not in VERSIONS:
            await self.app(scope, receive, send)
            return
        version = match.group(1)

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[VERSION_HEADER] = version
            await send(message)

        await self.app(scope, receive, send_with_version)


# --- payloads ---------------------------------------------------------------------------------------------


def _message(body: CancellationRequestBody | None) -> str | None:
    return body.cancellation_request.message if body is not None and body.cancellation_request else None


# --- presenting -------------------------------------------------------------------------------------------


def supported_actions(fo: FulfillmentOrder) -> list[FulfillmentOrderAction]:
    """What can be done next (Shopify's `supported_actions`), read off the fulfillment-order state machines."""
    actions = fulfillment_order_actions(
        fo.request_status, fo.status, assigned=fo.fulfillment_service_id is not None
    )
    return cast(list[FulfillmentOrderAction], actions)


def _text(value: object) -> str | None:
    return None if value is None else value if isinstance(value, str) else str(value)


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -MAX_ID - 1 <= value <= MAX_ID else None
    if isinstance(value, str) and value.isdigit() and int(value) <= MAX_ID:
        return int(value)
    return None


# Each address field with what reads it, in the schema's order (the order the payload keeps).
_DESTINATION_FIELDS: Final = tuple(
    (name, _int if name == "id" else _text) for name in Destination.model_fields
)
_ORIGIN_FIELDS: Final = tuple(
    (name, _int if name == "location_id" else _text) for name in Origin.model_fields
)


# A fulfillment order's columns that its payload shows, in `_ROW_COLUMNS`' order.
FulfillmentOrderValues = tuple[
    int,
    int,
    int | None,
    int | None,
    FORequestStatus,
    FOStatus,
    dict[str, object] | None,
    dict[str, object] | None,
]


class _JSONText(TypeDecorator[dict[str, object]]):
    """A JSONB column read as its text and parsed by pydantic's parser (about three times faster than the
    `json` module the driver parses JSONB with; the same values)."""

    impl = Text
    cache_ok = True

    def process_result_value(self, value: str | None, dialect: Dialect) -> dict[str, object] | None:
        return None if value is None else from_json(value)


# What the list selects of each fulfillment order: the columns `_payload` reads, not the whole row.
_ROW_COLUMNS: Final = (
    FulfillmentOrder.id,
    FulfillmentOrder.order_id,
    FulfillmentOrder.fulfillment_service_id,
    FulfillmentOrder.assigned_location_id,
    FulfillmentOrder.request_status,
    FulfillmentOrder.status,
    sql_cast(FulfillmentOrder.destination, _JSONText()).label("destination"),
    sql_cast(FulfillmentOrder.origin, _JSONText()).label("origin"),
)


def present(session: Session, orders: Sequence[FulfillmentOrderValues]) -> list[dict[str, object]]:
    """The REST payloads of `orders`, in their order (`services.request_view`: three queries whatever
    their number), as the plain values `FulfillmentOrderOut` holds, field for field in its order (enums as
    their values): they are made from the database's typed columns, so they are serialised as they are
    (`_json`), not validated into models first."""
    if not orders:
        return []
    shop_id = get_settings().shop_id
    parts = request_view.fulfillment_order_parts(
        session, [fo[0] for fo in orders], {fo[2] for fo in orders if fo[2] is not None}
    )
    return [_payload(fo, parts, shop_id) for fo in orders]


def _values(fo: FulfillmentOrder) -> FulfillmentOrderValues:
    return (
        fo.id,
        fo.order_id,
        fo.fulfillment_service_id,
        fo.assigned_location_id,
        fo.request_status,
        fo.status,
        fo.destination,
        fo.origin,
    )


def _payload(
    fo: FulfillmentOrderValues, parts: request_view.FulfillmentOrderParts, shop_id: int
) -> dict[str, object]:
    fo_id, order_id, service_id, location_id, request_status, status, destination, origin = fo
    destination = destination or {}
    origin = origin or {}
    return {
        "id": fo_id,
        "shop_id": shop_id,
        "order_id": order_id,
        "assigned_location_id": location_id,
        "request_status": request_status.value,
        "status": status.value,
        "supported_actions": fulfillment_order_actions(
            request_status, status, assigned=service_id is not None
        ),
        "destination": {name: read(destination.get(name)) for name, read in _DESTINATION_FIELDS},
        "origin": {name: read(origin.get(name)) for name, read in _ORIGIN_FIELDS},
        "line_items": [
            {
                "id": line_id,
                "shop_id": shop_id,
                "fulfillment_order_id": fo_id,
                "quantity": quantity,
                "line_item_id": order_item_id,
                "inventory_item_id": inventory_item_id,
                "fulfillable_quantity": fulfillable_quantity,
                "variant_id": variant_id,
            }
            for _, line_id, quantity, order_item_id, fulfillable_quantity, inventory_item_id, variant_id in (
                parts.lines.get(fo_id, ())
            )
        ],
        "outgoing_requests": [],
        "fulfillment_service_handle": parts.handles.get(service_id) if service_id is not None else None,
        "merchant_requests": [
            {
                "message": message,
                "request_options": {} if options is None else dict(options),
                "kind": kind.value,
                "sent_at": sent_at,
            }
            for _, message, options, kind, sent_at in parts.merchant_requests.get(fo_id, ())
        ],
    }


def _json(content: dict[str, object]) -> Response:
    """`content` as FastAPI sends a `response_model` (pydantic's JSON encoder, compact, UTF-8): the same
    bytes, without validating the payload into models and serialising those."""
    return Response(content=to_json(content), media_type="application/json")


def _envelope(session: Session, fo: FulfillmentOrder) -> Response:
    return _json({"fulfillment_order": present(session, [_values(fo)])[0]})


# --- routes -----------------------------------------------------------------------------------------------

router = APIRouter(
    prefix="/admin/api/{version}",
    tags=["fulfillment orders (Shopify Admin REST)"],
    dependencies=[Depends(api_version)],
    responses=SHOPIFY_RESPONSES,
)

FulfillmentOrderId = Annotated[int, Path(gt=0, le=MAX_ID, description="The fulfillment order's id.")]


@router.post(
    "/fulfillment_orders/{fulfillment_order_id}/cancellation_request.json",
    response_model=FulfillmentOrderEnvelope,
    summary="Send a cancellation request",
    description=(
        "Sends a cancellation request to the fulfillment service of a fulfillment order (staff token). "
        "The fulfillment order must be `in_progress` with `request_status` `accepted` (or "
        "`cancellation_rejected`, to ask again); it becomes `cancellation_requested` and the service is "
        "notified after commit. Any other state is a 422."
    ),
)
def send_cancellation_request(
    fulfillment_order_id: FulfillmentOrderId,
    principal: ShopifyStaff,
    session: DbSession,
    body: CancellationRequestBody | None = None,
) -> Response:
    fo = routing.send_cancellation_request(session, fulfillment_order_id, message=_message(body))
    return _envelope(session, fo)


def _answer(
    session: Session,
    fulfillment_order_id: int,
    principal: ShopifyService,
    body: CancellationRequestBody | None,
    decision: Literal["accept", "reject"],
) -> Response:
    outcome = replies.answer_cancellation(
        session,
        fulfillment_order_id,
        decision=decision,
        message=_message(body),
        service_id=principal.fulfillment_service_id,
    )
    if outcome.error is None:
        return _envelope(session, outcome.fulfillment_order)
    # Returned, not raised: the transaction commits, and the refused reply is recorded (and flagged) in the
    # event log.
    return JSONResponse({"errors": outcome.error}, status_code=422)


_ANSWER_DESCRIPTION = (
    "Answers the pending cancellation request of one of the caller's fulfillment orders (the assigned "
    "fulfillment service's token; staff get 403, another service 404). Replaying the same answer returns "
    "200 and changes nothing; answering an order with no pending request is a 422 (the attempt is "
    "recorded)."
)


@router.post(
    "/fulfillment_orders/{fulfillment_order_id}/cancellation_request/accept.json",
    response_model=FulfillmentOrderEnvelope,
    summary="Accept a cancellation request",
    description=_ANSWER_DESCRIPTION + " Accepting cancels the fulfillment order.",
)
def accept_cancellation_request(
    fulfillment_order_id: FulfillmentOrderId,
    principal: ShopifyService,
    session: DbSession,
    body: CancellationRequestBody | None = None,
) -> Response:
    return _answer(session, fulfillment_order_id, principal, body, "accept")


@router.post(
    "/fulfillment_orders/{fulfillment_order_id}/cancellation_request/reject.json",
    response_model=FulfillmentOrderEnvelope,
    summary="Reject a cancellation request",
    description=_ANSWER_DESCRIPTION + " Rejecting leaves it `in_progress`.",
)
def reject_cancellation_request(
    fulfillment_order_id: FulfillmentOrderId,
    principal: ShopifyService,
    session: DbSession,
    body: CancellationRequestBody | None = None,
) -> Response:
    return _answer(session, fulfillment_order_id, principal, body, "reject")


@router.get(
    "/fulfillment_orders/{fulfillment_order_id}.json",
    response_model=FulfillmentOrderEnvelope,
    summary="Retrieve a fulfillment order",
    description="Staff see every fulfillment order; a fulfillment service only its own (others are 404).",
)
def get_fulfillment_order(
    fulfillment_order_id: FulfillmentOrderId, principal: ShopifyReader, session: DbSession
) -> Response:
    fo = fos.get_for_service(session, fulfillment_order_id, principal.visible_service_id)
    return _envelope(session, fo)


class AssignmentStatus(StrEnum):
    cancellation_requested = "cancellation_requested"
    fulfillment_requested = "fulfillment_requested"
    fulfillment_accepted = "fulfillment_accepted"


REQUEST_STATUS_FOR: Final = {
    AssignmentStatus.cancellation_requested: FORequestStatus.cancellation_requested,
    AssignmentStatus.fulfillment_requested: FORequestStatus.submitted,
    AssignmentStatus.fulfillment_accepted: FORequestStatus.accepted,
}


@router.get(
    "/assigned_fulfillment_orders.json",
    response_model=FulfillmentOrderList,
    summary="List assigned fulfillment orders",
    description=(
        "Fulfillment orders assigned to a fulfillment service: the caller's own for a service token, every "
        "service's for staff. `assignment_status` filters by request status (`cancellation_requested`, "
        "`fulfillment_requested` = submitted, `fulfillment_accepted` = accepted); without it, every "
        "assigned fulfillment order that is not closed or cancelled. Ordered by id; page with `since_id`."
    ),
)
def assigned_fulfillment_orders(
    principal: ShopifyReader,
    session: DbSession,
    assignment_status: Annotated[AssignmentStatus | None, Query()] = None,
    location_ids: Annotated[
        list[Annotated[int, Field(ge=0, le=MAX_ID)]] | None,
        Query(alias="location_ids[]", description="Only these assigned locations."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=250)] = 50,
    since_id: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Only ids greater than this.")] = None,
) -> Response:
    service_id = principal.visible_service_id
    request_status = REQUEST_STATUS_FOR[assignment_status] if assignment_status is not None else None
    params = {"service_id": service_id, "since_id": since_id, "limit": limit}
    if location_ids:
        stmt = _page(
            fos.assigned(service_id, request_status=request_status, location_ids=location_ids),
            after=since_id is not None,
        )
    else:
        stmt = _assigned_page(service_id is not None, request_status, after=since_id is not None)
    orders = [tuple(row) for row in session.connection().execute(stmt, params)]
    return _json({"fulfillment_orders": present(session, orders)})


def _page(stmt: Select[FulfillmentOrder], *, after: bool) -> Executable:
    """`stmt`'s page of the columns a payload shows: ids above `:since_id` if `after`, in id order, at most
    `:limit`."""
    page = stmt.with_only_columns(*_ROW_COLUMNS)
    if after:
        page = page.where(FulfillmentOrder.id > bindparam("since_id"))
    return page.order_by(FulfillmentOrder.id).limit(bindparam("limit"))


@functools.cache
def _assigned_page(by_service: bool, request_status: FORequestStatus | None, *, after: bool) -> Executable:
    """The page without a location filter (a service's pull), built once for each shape: the service
    (`:service_id`), the bounds and the size are bound at each call."""
    service: BindParameter[int] | None = bindparam("service_id") if by_service else None
    return _page(fos.assigned(service, request_status=request_status), after=after)
