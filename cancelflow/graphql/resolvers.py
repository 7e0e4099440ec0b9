"""Resolvers of the GraphQL Admin subset: thin shapes over the same services as the REST endpoints.

Reads go through `services.request_view` (a whole page of fulfillment orders in a fixed number of
queries) and `services.fulfillment_orders.assigned`; the mutations call `routing.send_cancellation_request`
and `replies.answer_cancellation`, so REST and GraphQL can be mixed on one fulfillment order. A refusal
of the domain (unknown id, another service's order, a state that does not allow it) is a `userErrors`
entry on `["id"]`; only a token of the wrong kind is a top-level `ACCESS_DENIED` error.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from ariadne import InterfaceType, ObjectType, ScalarType
from ariadne.types import SchemaBindable
from graphql import GraphQLError, GraphQLResolveInfo
from sqlalchemy import ColumnElement, select, tuple_
from sqlalchemy.orm import Session

from cancelflow.config import get_settings
from cancelflow.errors import InvalidTransition, NotFound
from cancelflow.graphql.versions import since
from cancelflow.models import FulfillmentOrder, MerchantRequest, Order, OrderItem
from cancelflow.models.enums import FORequestStatus
from cancelflow.models.fulfillment import FulfillmentOrderLineItem
from cancelflow.models.transitions import fulfillment_order_actions
from cancelflow.services import fulfillment_orders as fos
from cancelflow.services import replies, request_view, routing

MAX_PAGE: Final = 250
MAX_IDS: Final = 250
NOT_FOUND: Final = "Fulfillment order does not exist."
_GID = re.compile(r"^gid://shopify/([A-Za-z]+)/([0-9]{1,19})$")
_MAX_ID: Final = 2**63 - 1

ASSIGNMENT_STATUSES: Final = {
    "CANCELLATION_REQUESTED": FORequestStatus.cancellation_requested,
    "FULFILLMENT_ACCEPTED": FORequestStatus.accepted,
    "FULFILLMENT_REQUESTED": FORequestStatus.submitted,
    "FULFILLMENT_UNSUBMITTED": FORequestStatus.unsubmitted,
}


# --- the caller ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: a merchant (staff token, sees every fulfillment order) or a fulfillment service."""

    is_staff: bool
    fulfillment_service_id: int | None

    @property
    def visible_service_id(self) -> int | None:
        return None if self.is_staff else self.fulfillment_service_id


@dataclass(frozen=True, slots=True)
class Context:
    session: Session
    caller: Caller


def _context(info: GraphQLResolveInfo[Any]) -> Context:
    context = info.context
    assert isinstance(context, Context)
    return context


def access_denied(field: str, scope: str) -> GraphQLError:
    return GraphQLError(
        f"Access denied for {field} field. Required access: `{scope}` access scope.",
        extensions={"code": "ACCESS_DENIED", "requiredAccess": f"`{scope}` access scope."},
    )


# --- ids ----------------------------------------------------------------------------------------------------


def gid(kind: str, ident: int | str) -> str:
    return f"gid://shopify/{kind}/{ident}"


def parse_gid(value: object, kind: str) -> int | None:
    """The id in `gid://shopify/<kind>/<id>`, or None for anything else."""
    match = _GID.match(value) if isinstance(value, str) else None
    if match is None or match.group(1) != kind:
        return None
    ident = int(match.group(2))
    return ident if 0 < ident <= _MAX_ID else None


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- views --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FulfillmentOrderView:
    """A fulfillment order with what its fields read (one batch of queries per page of them)."""

    detail: request_view.FulfillmentOrderDetail
    order: Order

    @property
    def fo(self) -> FulfillmentOrder:
        return self.detail.fulfillment_order


def views(session: Session, orders: Sequence[FulfillmentOrder]) -> list[FulfillmentOrderView]:
    if not orders:
        return []
    details = request_view.fulfillment_orders(session, orders)
    order_rows = {
        o.id: o for o in session.scalars(select(Order).where(Order.id.in_({fo.order_id for fo in orders})))
    }
    return [FulfillmentOrderView(d, order_rows[d.fulfillment_order.order_id]) for d in details]


def _visible(session: Session, caller: Caller, fo_id: int | None) -> FulfillmentOrder | None:
    if fo_id is None:
        return None
    fo = fos.get(session, fo_id)
    if fo is None or (
        caller.visible_service_id is not None and fo.fulfillment_service_id != caller.visible_service_id
    ):
        return None
    return fo


# --- connections --------------------------------------------------------------------------------------------


def encode_cursor(sort_key: str, values: Sequence[object]) -> str:
    raw = json.dumps([sort_key, *values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort_key: str, arity: int) -> list[Any]:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        decoded = None
    if not (isinstance(decoded, list) and len(decoded) == arity + 1 and decoded[0] == sort_key):
        raise GraphQLError(f"Invalid cursor: {cursor[:100]}", extensions={"code": "BAD_USER_INPUT"})
    values: list[Any] = decoded[1:]
    return values


def _check_page(first: int | None, last: int | None) -> None:
    if first is None and last is None:
        raise GraphQLError("you must provide one of first or last", extensions={"code": "BAD_USER_INPUT"})
    for name, value in (("first", first), ("last", last)):
        if value is not None and not 0 <= value <= MAX_PAGE:
            raise GraphQLError(
                f"The `{name}` argument must be between 0 and {MAX_PAGE}.",
                extensions={"code": "BAD_USER_INPUT"},
            )


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[Any]
    has_next: bool
    has_previous: bool


def _trim(rows: list[Any], first: int | None, last: int | None, *, after: bool, before: bool) -> Page:
    """Relay's slicing of `rows` (already cut at the cursors, in order) to `first` then `last`."""
    has_next = before
    has_previous = after
    if first is not None:
        has_next = has_next or len(rows) > first
        rows = rows[:first]
    if last is not None:
        has_previous = has_previous or len(rows) > last
        rows = rows[len(rows) - last :] if last else []
    return Page(rows, has_next, has_previous)


def connection(items: Sequence[Any], cursors: Sequence[str], page: Page) -> dict[str, Any]:
    edges = [{"cursor": c, "node": n} for c, n in zip(cursors, items, strict=True)]
    return {
        "edges": edges,
        "nodes": list(items),
        "pageInfo": {
            "hasNextPage": page.has_next,
            "hasPreviousPage": page.has_previous,
            "startCursor": cursors[0] if cursors else None,
            "endCursor": cursors[-1] if cursors else None,
        },
    }


def page_in_memory(
    items: Sequence[Any],
    *,
    key: Callable[[Any], int],
    kind: str,
    first: int | None,
    after: str | None,
    last: int | None,
    before: str | None,
    reverse: bool,
) -> tuple[list[Any], list[str], Page]:
    """A connection over a short list held in memory (a fulfillment order's lines or requests), by id."""
    _check_page(first, last)
    ordered = sorted(items, key=key, reverse=reverse)
    if after is not None:
        (mark,) = decode_cursor(after, kind, 1)
        ordered = [i for i in ordered if (key(i) < mark if reverse else key(i) > mark)]
    if before is not None:
        (mark,) = decode_cursor(before, kind, 1)
        ordered = [i for i in ordered if (key(i) > mark if reverse else key(i) < mark)]
    page = _trim(ordered, first, last, after=after is not None, before=before is not None)
    return page.rows, [encode_cursor(kind, [key(i)]) for i in page.rows], page


# --- assigned fulfillment orders ----------------------------------------------------------------------------

_SORT_COLUMNS: Final[dict[str, tuple[Any, ...]]] = {
    # No search query here, so RELEVANCE has nothing to rank by: it orders as ID does.
    "ID": (FulfillmentOrder.id,),
    "RELEVANCE": (FulfillmentOrder.id,),
    "UPDATED_AT": (FulfillmentOrder.modified_date, FulfillmentOrder.id),
}


def _sort_values(fo: FulfillmentOrder, sort_key: str) -> list[object]:
    if sort_key == "UPDATED_AT":
        return [fo.modified_date.isoformat(), fo.id]
    return [fo.id]


def _cursor_values(values: list[Any], sort_key: str) -> tuple[object, ...]:
    try:
        if sort_key == "UPDATED_AT":
            return (datetime.fromisoformat(str(values[0])), int(values[1]))
        return (int(values[0]),)
    except (TypeError, ValueError) as exc:
        raise GraphQLError("Invalid cursor", extensions={"code": "BAD_USER_INPUT"}) from exc


def _location_ids(values: Sequence[str] | None) -> list[int] | None:
    if values is None:
        return None
    if len(values) > MAX_IDS:
        raise GraphQLError(
            f"The input array size of {len(values)} is greater than the maximum allowed of {MAX_IDS}.",
            extensions={"code": "MAX_INPUT_SIZE_EXCEEDED"},
        )
    ids = []
    for value in values:
        ident = parse_gid(value, "Location")
        if ident is None:
            raise GraphQLError(f"Invalid global id '{value[:100]}'", extensions={"code": "BAD_USER_INPUT"})
        ids.append(ident)
    return ids


def assigned_fulfillment_orders(
    _obj: Any,
    info: GraphQLResolveInfo[Any],
    *,
    assignmentStatus: str | None = None,  # noqa: N803 - GraphQL's argument names
    locationIds: list[str] | None = None,  # noqa: N803
    first: int | None = None,
    after: str | None = None,
    last: int | None = None,
    before: str | None = None,
    reverse: bool = False,
    sortKey: str = "ID",  # noqa: N803
) -> dict[str, Any]:
    context = _context(info)
    _check_page(first, last)
    columns = _SORT_COLUMNS[sortKey]
    stmt = fos.assigned(
        context.caller.visible_service_id,
        request_status=ASSIGNMENT_STATUSES[assignmentStatus] if assignmentStatus else None,
        location_ids=_location_ids(locationIds),
    )
    key = tuple_(*columns)

    def beyond(cursor: str, *, forward: bool) -> ColumnElement[bool]:
        mark = tuple_(*_cursor_values(decode_cursor(cursor, sortKey, len(columns)), sortKey))
        return key > mark if forward != reverse else key < mark

    if after is not None:
        stmt = stmt.where(beyond(after, forward=True))
    if before is not None:
        stmt = stmt.where(beyond(before, forward=False))
    ascending = [c.desc() if reverse else c.asc() for c in columns]
    descending = [c.asc() if reverse else c.desc() for c in columns]
    if first is not None:
        rows = list(context.session.scalars(stmt.order_by(*ascending).limit(first + 1)))
    else:
        assert last is not None
        rows = list(context.session.scalars(stmt.order_by(*descending).limit(last + 1)))[::-1]
        # Only the last `last + 1` were read: one more than `last` tells there is a previous page.
    page = _trim(rows, first, last, after=after is not None, before=before is not None)
    items = views(context.session, page.rows)
    return connection(items, [encode_cursor(sortKey, _sort_values(v.fo, sortKey)) for v in items], page)


# --- bindables ----------------------------------------------------------------------------------------------


def _user_error(message: str) -> dict[str, Any]:
    return {"field": ["id"], "message": message}


def _payload(context: Context, fo: FulfillmentOrder | None, errors: list[dict[str, Any]]) -> dict[str, Any]:
    view = views(context.session, [fo])[0] if fo is not None and not errors else None
    return {"fulfillmentOrder": view, "userErrors": errors}


def _submit(_obj: Any, info: GraphQLResolveInfo[Any], id: str, message: str | None = None) -> dict[str, Any]:
    context = _context(info)
    if not context.caller.is_staff:
        raise access_denied(
            "fulfillmentOrderSubmitCancellationRequest", "write_third_party_fulfillment_orders"
        )
    fo_id = parse_gid(id, "FulfillmentOrder")
    if fo_id is None:
        return _payload(context, None, [_user_error(NOT_FOUND)])
    try:
        # A savepoint: a refusal leaves nothing of the attempt behind, whatever else the request did.
        with context.session.begin_nested():
            fo = routing.send_cancellation_request(context.session, fo_id, message=message)
    except NotFound:
        return _payload(context, None, [_user_error(NOT_FOUND)])
    except InvalidTransition as exc:
        return _payload(context, None, [_user_error(exc.message)])
    return _payload(context, fo, [])


def _answer(decision: Literal["accept", "reject"]) -> Callable[..., dict[str, Any]]:
    field = f"fulfillmentOrder{decision.capitalize()}CancellationRequest"

    def answer(
        _obj: Any, info: GraphQLResolveInfo[Any], id: str, message: str | None = None
    ) -> dict[str, Any]:
        context = _context(info)
        service_id = context.caller.fulfillment_service_id
        if context.caller.is_staff or service_id is None:
            raise access_denied(field, "write_assigned_fulfillment_orders")
        fo_id = parse_gid(id, "FulfillmentOrder")
        if fo_id is None:
            return _payload(context, None, [_user_error(NOT_FOUND)])
        try:
            with context.session.begin_nested():
                outcome = replies.answer_cancellation(
                    context.session, fo_id, decision=decision, message=message, service_id=service_id
                )
        except NotFound:
            return _payload(context, None, [_user_error(NOT_FOUND)])
        # A refused reply is recorded (and flagged) in the event log: the savepoint is kept.
        errors = [_user_error(outcome.error)] if outcome.error is not None else []
        return _payload(context, outcome.fulfillment_order, errors)

    return answer


def _fulfillment_order(_obj: Any, info: GraphQLResolveInfo[Any], id: str) -> FulfillmentOrderView | None:
    context = _context(info)
    fo = _visible(context.session, context.caller, parse_gid(id, "FulfillmentOrder"))
    return views(context.session, [fo])[0] if fo is not None else None


def _nodes(_obj: Any, info: GraphQLResolveInfo[Any], ids: list[str]) -> list[FulfillmentOrderView | None]:
    context = _context(info)
    if len(ids) > MAX_IDS:
        raise GraphQLError(
            f"The input array size of {len(ids)} is greater than the maximum allowed of {MAX_IDS}.",
            extensions={"code": "MAX_INPUT_SIZE_EXCEEDED"},
        )
    wanted = [parse_gid(i, "FulfillmentOrder") for i in ids]
    found = [
        fo for fo in (_visible(context.session, context.caller, i) for i in set(wanted)) if fo is not None
    ]
    by_id = {v.fo.id: v for v in views(context.session, found)}
    return [by_id.get(i) if i is not None else None for i in wanted]


def _node(obj: Any, info: GraphQLResolveInfo[Any], id: str) -> FulfillmentOrderView | None:
    return _nodes(obj, info, [id])[0]


def _shop(*_: Any) -> dict[str, Any]:
    settings = get_settings()
    return {"__typename": "Shop", "id": gid("Shop", settings.shop_id), "name": settings.shop_name}


def _type_of(obj: Any, *_: Any) -> str:
    if isinstance(obj, FulfillmentOrderView):
        return "FulfillmentOrder"
    return str(obj["__typename"])


def _text(data: dict[str, object], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(value)


_ADDRESS = ("address1", "address2", "city", "phone", "province", "zip")


def _fulfillment_order_type() -> ObjectType:
    t = ObjectType("FulfillmentOrder")

    def field(name: str) -> Callable[[Callable[[FulfillmentOrderView], Any]], None]:
        def bind(read: Callable[[FulfillmentOrderView], Any]) -> None:
            t.set_field(name, lambda view, *_args, **_kwargs: read(view))

        return bind

    field("id")(lambda v: gid("FulfillmentOrder", v.fo.id))
    field("status")(lambda v: v.fo.status.value.upper())
    field("requestStatus")(lambda v: v.fo.request_status.value.upper())
    field("createdAt")(lambda v: _iso(v.fo.created_date))
    field("updatedAt")(lambda v: _iso(v.fo.modified_date))
    field("fulfillAt")(lambda v: None)
    field("fulfillBy")(lambda v: None)
    field("channelId")(lambda v: gid("Channel", v.order.channel_id))
    field("orderId")(lambda v: gid("Order", v.order.id))
    field("orderName")(lambda v: v.order.number)
    field("orderProcessedAt")(lambda v: _iso(v.order.created_date))
    field("order")(lambda v: {"__typename": "Order", "id": gid("Order", v.order.id), "name": v.order.number})
    field("supportedActions")(
        lambda v: [
            {"action": action.upper(), "externalUrl": None}
            for action in fulfillment_order_actions(
                v.fo.request_status, v.fo.status, assigned=v.fo.fulfillment_service_id is not None
            )
        ]
    )

    @field("destination")
    def _destination(v: FulfillmentOrderView) -> dict[str, Any] | None:
        data = v.fo.destination or {}
        if not data:
            return None
        out: dict[str, Any] = {k: _text(data, k) for k in (*_ADDRESS, "company", "email")}
        out.update(
            __typename="FulfillmentOrderDestination",
            id=gid("FulfillmentOrderDestination", v.fo.id),
            firstName=_text(data, "first_name"),
            lastName=_text(data, "last_name"),
        )
        return out

    @field("assignedLocation")
    def _assigned_location(v: FulfillmentOrderView) -> dict[str, Any]:
        data = v.fo.origin or {}
        name = _text(data, "name") or ""
        out: dict[str, Any] = {k: _text(data, k) for k in _ADDRESS}
        location_id = v.fo.assigned_location_id
        out.update(
            name=name,
            location=(
                {"__typename": "Location", "id": gid("Location", location_id), "name": name}
                if location_id
                else None
            ),
        )
        return out

    def line_items(
        v: FulfillmentOrderView,
        _info: GraphQLResolveInfo[Any],
        *,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        reverse: bool = False,
    ) -> dict[str, Any]:
        rows, cursors, page = page_in_memory(
            v.detail.lines,
            key=lambda pair: pair[0].id,
            kind="FulfillmentOrderLineItem",
            first=first,
            after=after,
            last=last,
            before=before,
            reverse=reverse,
        )
        return connection([_line(line, item) for line, item in rows], cursors, page)

    def merchant_requests(
        v: FulfillmentOrderView,
        _info: GraphQLResolveInfo[Any],
        *,
        kind: str | None = None,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        reverse: bool = False,
    ) -> dict[str, Any]:
        requests = [r for r in v.detail.merchant_requests if kind is None or r.kind.value.upper() == kind]
        rows, cursors, page = page_in_memory(
            requests,
            key=lambda r: r.id,
            kind="FulfillmentOrderMerchantRequest",
            first=first,
            after=after,
            last=last,
            before=before,
            reverse=reverse,
        )
        return connection([_merchant_request(r, v) for r in rows], cursors, page)

    t.set_field("lineItems", line_items)
    t.set_field("merchantRequests", merchant_requests)
    return t


def _line(line: FulfillmentOrderLineItem, item: OrderItem) -> dict[str, Any]:
    return {
        "__typename": "FulfillmentOrderLineItem",
        "id": gid("FulfillmentOrderLineItem", line.id),
        "inventoryItemId": gid("InventoryItem", item.inventory_item_id) if item.inventory_item_id else None,
        "lineItem": {
            "__typename": "LineItem",
            "id": gid("LineItem", item.id),
            "name": item.product_name,
            "quantity": item.quantity,
            "sku": item.sku,
        },
        "productTitle": item.product_name,
        "remainingQuantity": line.fulfillable_quantity,
        "requiresShipping": True,
        "sku": item.sku,
        "totalQuantity": line.quantity,
        "variantTitle": None,
        "vendor": None,
    }


def _merchant_request(request: MerchantRequest, owner: FulfillmentOrderView) -> dict[str, Any]:
    response = None
    if request.response is not None:
        response = {
            "response": request.response,
            "message": request.response_message,
            "responded_at": _iso(request.responded_at),
        }
    return {
        "__typename": "FulfillmentOrderMerchantRequest",
        "id": gid("FulfillmentOrderMerchantRequest", request.id),
        "fulfillmentOrder": owner,
        "kind": request.kind.value.upper(),
        "message": request.message,
        "requestOptions": request.request_options or {},
        "responseData": response,
        "sentAt": _iso(request.sent_at),
    }


def bindables(version: str) -> list[SchemaBindable]:
    """The resolvers of `version`'s schema (where `assignedFulfillmentOrders` lives depends on it)."""
    query = ObjectType("QueryRoot")
    query.set_field("fulfillmentOrder", _fulfillment_order)
    query.set_field("node", _node)
    query.set_field("nodes", _nodes)
    query.set_field("shop", _shop)
    shop = ObjectType("Shop")
    shop.set_field("assignedFulfillmentOrders", assigned_fulfillment_orders)
    if since(version, "2024-07"):
        query.set_field("assignedFulfillmentOrders", assigned_fulfillment_orders)
    mutation = ObjectType("Mutation")
    mutation.set_field("fulfillmentOrderSubmitCancellationRequest", _submit)
    mutation.set_field("fulfillmentOrderAcceptCancellationRequest", _answer("accept"))
    mutation.set_field("fulfillmentOrderRejectCancellationRequest", _answer("reject"))
    node = InterfaceType("Node", _type_of)
    displayable = InterfaceType("DisplayableError", lambda *_: "UserError")
    json_scalar = ScalarType("JSON")
    return [
        query,
        shop,
        mutation,
        _fulfillment_order_type(),
        node,
        displayable,
        json_scalar,
    ]
