"""What interfaces show of a request, an order and a fulfillment order: one read model, many shapes.

The REST payloads, the fulfillment-order resource, the order view and `cancelflow show` (and any later
page or GraphQL resolver) read through these functions and only shape what they return. Each reads a whole
batch with a fixed number of queries, whatever its size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Row, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from cancelflow.models import (
    CancellationPlan,
    CancellationReason,
    CancellationRequest,
    Customer,
    Event,
    FulfillmentOrder,
    FulfillmentOrderLineItem,
    FulfillmentService,
    MerchantRequest,
    MoneyTransaction,
    Order,
    OrderItem,
    Payment,
)
from cancelflow.models.enums import MerchantRequestKind
from cancelflow.services.step_view import StepView, steps_of

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class RequestDetail:
    """A request with its order, item, customer, reason and plan; `steps` (every step of the request,
    validation included, oldest first) and `money` (the plan's transactions, oldest first)."""

    request: CancellationRequest
    order: Order
    item: OrderItem
    customer: Customer
    reason: CancellationReason
    plan: CancellationPlan | None
    steps: list[StepView] = field(default_factory=list)
    money: list[MoneyTransaction] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RequestPicture:
    """Everything about one request: its detail, the fulfillment orders of its plan and its events (the
    request's, the plan's and those fulfillment orders', in order)."""

    detail: RequestDetail
    fulfillment_orders: list[FulfillmentOrder]
    events: list[Event]


@dataclass(frozen=True, slots=True)
class FulfillmentOrderDetail:
    """A fulfillment order with its non-empty lines (each with its order item), the handle of its
    service and the requests sent to that service about it, oldest first."""

    fulfillment_order: FulfillmentOrder
    lines: list[tuple[FulfillmentOrderLineItem, OrderItem]]
    service_handle: str | None
    merchant_requests: list[MerchantRequest]


@dataclass(frozen=True, slots=True)
class OrderDetail:
    """An order with its items (in id order), payment and fulfillment-order ids (in id order)."""

    order: Order
    items: list[OrderItem]
    payment: Payment | None
    fulfillment_order_ids: list[int]


def _by_id(session: Session, model: type[M], ids: set[int]) -> dict[int, M]:
    if not ids:
        return {}
    column: Any = model.id  # type: ignore[attr-defined]
    return {row.id: row for row in session.scalars(select(model).where(column.in_(ids)))}  # type: ignore[attr-defined]


def details(session: Session, requests: Sequence[CancellationRequest]) -> list[RequestDetail]:
    """The detail of each request, in their order."""
    orders = _by_id(session, Order, {r.order_id for r in requests})
    items = _by_id(session, OrderItem, {r.order_item_id for r in requests})
    reasons = _by_id(session, CancellationReason, {r.reason_id for r in requests})
    customers = _by_id(session, Customer, {o.customer_id for o in orders.values()})
    request_ids = [r.id for r in requests]
    plans: dict[int, CancellationPlan] = {}
    steps: dict[int, list[StepView]] = {}
    money: dict[int, list[MoneyTransaction]] = defaultdict(list)
    if request_ids:
        plans = {
            p.request_id: p
            for p in session.scalars(
                select(CancellationPlan).where(CancellationPlan.request_id.in_(request_ids))
            )
        }
        steps = steps_of(session, request_ids)
        plan_ids = [p.id for p in plans.values()]
        if plan_ids:
            for tx in session.scalars(
                select(MoneyTransaction)
                .where(MoneyTransaction.plan_id.in_(plan_ids))
                .order_by(MoneyTransaction.id)
            ):
                money[tx.plan_id].append(tx)
    out: list[RequestDetail] = []
    for r in requests:
        order = orders[r.order_id]
        plan = plans.get(r.id)
        out.append(
            RequestDetail(
                request=r,
                order=order,
                item=items[r.order_item_id],
                customer=customers[order.customer_id],
                reason=reasons[r.reason_id],
                plan=plan,
                steps=list(steps.get(r.id, [])),
                money=money[plan.id] if plan is not None else [],
            )
        )
    return out


def picture(session: Session, request_id: int) -> RequestPicture | None:
    """Everything about one request, or None if there is no such request."""
    request = session.get(CancellationRequest, request_id)
    if request is None:
        return None
    [detail] = details(session, [request])
    plan = detail.plan
    fulfillment_orders: list[FulfillmentOrder] = []
    if plan is not None:
        fulfillment_orders = list(
            session.scalars(
                select(FulfillmentOrder)
                .where(FulfillmentOrder.cancellation_plan_id == plan.id)
                .order_by(FulfillmentOrder.id)
            )
        )
    # The request's, its plan's and its fulfillment orders' events (the warehouse's replies, a withdrawal).
    events = session.scalars(
        select(Event)
        .where(
            ((Event.entity == "request") & (Event.entity_id == request.id))
            | ((Event.entity == "plan") & (Event.entity_id == (plan.id if plan else -1)))
            | (
                (Event.entity == "fulfillment_order")
                & Event.entity_id.in_([fo.id for fo in fulfillment_orders])
            )
        )
        .order_by(Event.id)
    ).all()
    return RequestPicture(detail, fulfillment_orders, list(events))


def fulfillment_orders(session: Session, orders: Sequence[FulfillmentOrder]) -> list[FulfillmentOrderDetail]:
    """The detail of each fulfillment order, in their order, with three queries whatever their number."""
    if not orders:
        return []
    ids = [fo.id for fo in orders]
    lines: dict[int, list[tuple[FulfillmentOrderLineItem, OrderItem]]] = defaultdict(list)
    rows = session.execute(
        select(FulfillmentOrderLineItem, OrderItem)
        .join(OrderItem, OrderItem.id == FulfillmentOrderLineItem.order_item_id)
        .where(
            FulfillmentOrderLineItem.fulfillment_order_id.in_(ids),
            # A split can leave a line with nothing on it; that quantity now lives on the new order.
            FulfillmentOrderLineItem.quantity > 0,
        )
        .order_by(FulfillmentOrderLineItem.id)
    )
    for line, item in rows:
        lines[line.fulfillment_order_id].append((line, item))
    service_ids = {fo.fulfillment_service_id for fo in orders if fo.fulfillment_service_id is not None}
    handles: dict[int, str] = {}
    if service_ids:
        handles = dict(
            session.execute(
                select(FulfillmentService.id, FulfillmentService.handle).where(
                    FulfillmentService.id.in_(service_ids)
                )
            ).all()
        )
    requests: dict[int, list[MerchantRequest]] = defaultdict(list)
    for request in session.scalars(
        select(MerchantRequest)
        .where(MerchantRequest.fulfillment_order_id.in_(ids))
        .order_by(MerchantRequest.id)
    ):
        requests[request.fulfillment_order_id].append(request)
    return [
        FulfillmentOrderDetail(
            fulfillment_order=fo,
            lines=lines[fo.id],
            service_handle=handles.get(fo.fulfillment_service_id)
            if fo.fulfillment_service_id is not None
            else None,
            merchant_requests=requests[fo.id],
        )
        for fo in orders
    ]


# (fulfillment order id, id, quantity, order item id, fulfillable quantity, inventory item id, variant id)
LineRow = Row[int, int, int, int, int, int | None, int | None]
# (fulfillment order id, message, request options, kind, sent at)
MerchantRequestRow = Row[int, str | None, dict[str, object], MerchantRequestKind, datetime]


@dataclass(frozen=True, slots=True)
class FulfillmentOrderParts:
    """The rows a fulfillment order's payload shows beside its own columns, for a batch (`LineRow`,
    `MerchantRequestRow`; they unpack as tuples): its non-empty lines in id order, its service's handle and
    the requests sent about it, oldest first; each by fulfillment order id (service id for the handles)."""

    lines: dict[int, list[LineRow]]
    handles: dict[int, str]
    merchant_requests: dict[int, list[MerchantRequestRow]]


_IDS = bindparam("ids", type_=ARRAY(BigInteger))
# Built once: each execution sends the ids as one array instead of rendering an IN list of its size.
_PART_LINES = (
    select(
        FulfillmentOrderLineItem.fulfillment_order_id,
        FulfillmentOrderLineItem.id,
        FulfillmentOrderLineItem.quantity,
        FulfillmentOrderLineItem.order_item_id,
        FulfillmentOrderLineItem.fulfillable_quantity,
        OrderItem.inventory_item_id,
        OrderItem.variant_id,
    )
    .join(OrderItem, OrderItem.id == FulfillmentOrderLineItem.order_item_id)
    # A split can leave a line with nothing on it; that quantity now lives on the new order.
    .where(FulfillmentOrderLineItem.fulfillment_order_id == any_(_IDS), FulfillmentOrderLineItem.quantity > 0)
    .order_by(FulfillmentOrderLineItem.id)
)
_PART_HANDLES = select(FulfillmentService.id, FulfillmentService.handle).where(
    FulfillmentService.id == any_(_IDS)
)
_PART_REQUESTS = (
    select(
        MerchantRequest.fulfillment_order_id,
        MerchantRequest.message,
        MerchantRequest.request_options,
        MerchantRequest.kind,
        MerchantRequest.sent_at,
    )
    .where(MerchantRequest.fulfillment_order_id == any_(_IDS))
    .order_by(MerchantRequest.id)
)


def fulfillment_order_parts(
    session: Session, ids: Sequence[int], service_ids: Iterable[int]
) -> FulfillmentOrderParts:
    """What `fulfillment_orders` reads for the fulfillment orders `ids` (of the services `service_ids`),
    as plain rows of the columns a payload shows (no ORM objects): for interfaces that only serialise
    them. The same three queries, sent on the session's connection after flushing what the session holds
    (a reply just recorded is shown)."""
    lines: dict[int, list[LineRow]] = defaultdict(list)
    requests: dict[int, list[MerchantRequestRow]] = defaultdict(list)
    handles: dict[int, str] = {}
    if not ids:
        return FulfillmentOrderParts(lines, handles, requests)
    session.flush()
    connection = session.connection()
    for line in connection.execute(_PART_LINES, {"ids": ids}):
        lines[line[0]].append(line)
    services = list(service_ids)
    if services:
        handles = {row[0]: row[1] for row in connection.execute(_PART_HANDLES, {"ids": services})}
    for request in connection.execute(_PART_REQUESTS, {"ids": ids}):
        requests[request[0]].append(request)
    return FulfillmentOrderParts(lines, handles, requests)


def order(session: Session, order_id: int) -> OrderDetail | None:
    """The order's detail, or None if there is no such order."""
    found = session.get(Order, order_id)
    if found is None:
        return None
    items = session.scalars(select(OrderItem).where(OrderItem.order_id == found.id).order_by(OrderItem.id))
    payment = session.scalars(select(Payment).where(Payment.order_id == found.id)).one_or_none()
    fo_ids: Iterable[int] = session.scalars(
        select(FulfillmentOrder.id).where(FulfillmentOrder.order_id == found.id).order_by(FulfillmentOrder.id)
    )
    return OrderDetail(found, list(items), payment, list(fo_ids))
