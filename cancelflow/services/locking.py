"""The order lock and the reads made under it.

One order at a time: a request, its plan and its fulfillment orders change under the order's row lock, taken
first (the lock order: order, then request, plan, fulfillment orders). Rows read after it with `fresh` are
the committed state.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeVar

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from cancelflow.errors import NotFound
from cancelflow.models import (
    CancellationPlan,
    CancellationRequest,
    FulfillmentOrder,
    Order,
)
from cancelflow.models.base import table_of

M = TypeVar("M")


class LockedOrder(NamedTuple):
    id: int
    channel_id: int
    currency: str


_ORDERS = table_of(Order)
_REQUESTS = table_of(CancellationRequest)
_LOCKED_ORDER_COLUMNS = (_ORDERS.c.id, _ORDERS.c.channel_id, _ORDERS.c.currency)
_LOCK_ORDER = select(*_LOCKED_ORDER_COLUMNS).where(_ORDERS.c.id == bindparam("order_id")).with_for_update()
_LOCK_ORDER_OF = (
    select(*_LOCKED_ORDER_COLUMNS)
    .join_from(_ORDERS, _REQUESTS, _REQUESTS.c.order_id == _ORDERS.c.id)
    .where(_REQUESTS.c.id == bindparam("request_id"))
    .with_for_update(of=_ORDERS)
)


_FOS = table_of(FulfillmentOrder)
_LOCK_ORDER_OF_FO = (
    select(_ORDERS.c.id)
    .join_from(_ORDERS, _FOS, _FOS.c.order_id == _ORDERS.c.id)
    .where(_FOS.c.id == bindparam("fo_id"))
    .with_for_update(of=_ORDERS)
)


def lock_order(session: Session, order_id: int) -> LockedOrder:
    """One order at a time: requests and plans of an order change under this row lock."""
    return LockedOrder(*session.connection().execute(_LOCK_ORDER, {"order_id": order_id}).one())


def lock_order_of(session: Session, request_id: int) -> LockedOrder:
    """Lock the order of a request. Rows read after this (with `fresh`) are the committed state."""
    return LockedOrder(*session.connection().execute(_LOCK_ORDER_OF, {"request_id": request_id}).one())


def lock_order_of_fo(session: Session, fo_id: int) -> None:
    """Lock the order of a fulfillment order (none is taken when there is no such fulfillment order)."""
    session.connection().execute(_LOCK_ORDER_OF_FO, {"fo_id": fo_id}).one_or_none()


_FRESH: dict[type[Any], Select[Any]] = {}
PLAN_AND_REQUEST = (
    select(CancellationPlan, CancellationRequest)
    .join(CancellationRequest, CancellationRequest.id == CancellationPlan.request_id)
    .where(CancellationPlan.id == bindparam("plan_id"))
    .execution_options(populate_existing=True)
)


def fresh(session: Session, model: type[M], ident: int) -> M:
    """One row by primary key, read from the database even if the session already holds it."""
    stmt = _FRESH.get(model)
    if stmt is None:
        pk = model.__table__.c.id  # type: ignore[attr-defined]
        stmt = _FRESH[model] = (
            select(model).where(pk == bindparam("ident")).execution_options(populate_existing=True)
        )
    return session.scalars(stmt, {"ident": ident}).one()  # type: ignore[no-any-return]


def plan_and_request(session: Session, plan_id: int) -> tuple[CancellationPlan, CancellationRequest]:
    """A plan and its request, fresh, in one round trip (after the order lock, so they are current)."""
    plan, request = session.execute(PLAN_AND_REQUEST, {"plan_id": plan_id}).one()
    return plan, request


def get_request(session: Session, request_id: int) -> CancellationRequest:
    request = session.get(CancellationRequest, request_id)
    if request is None:
        raise NotFound(f"cancellation request {request_id} not found")
    return request


def plan_of(session: Session, request_id: int) -> CancellationPlan | None:
    return session.scalars(
        select(CancellationPlan).where(CancellationPlan.request_id == request_id)
    ).one_or_none()
