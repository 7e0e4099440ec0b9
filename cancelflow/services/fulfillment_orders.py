"""Fulfillment-order operations with Shopify's semantics: split, cancel directly, request cancellation."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import BindParameter, Select, bindparam, select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.orm import Session

from cancelflow.errors import Invalid, InvalidTransition, NotFound
from cancelflow.models import FulfillmentOrder, FulfillmentOrderLineItem, MerchantRequest
from cancelflow.models.enums import FORequestStatus, FOStatus, MerchantRequestKind
from cancelflow.models.transitions import ASKABLE_REQUEST_STATUSES
from cancelflow.models.transitions import needs_service_consent as _needs_consent
from cancelflow.services import transitions
from cancelflow.services.clock import now

OPEN_STATUSES = frozenset(
    {FOStatus.open, FOStatus.in_progress, FOStatus.scheduled, FOStatus.on_hold, FOStatus.incomplete}
)
# The service has taken the work on: only it can stop it, so it must be asked (read off the tables).
REMOTE_REQUEST_STATUSES = ASKABLE_REQUEST_STATUSES


_GET = select(FulfillmentOrder).where(FulfillmentOrder.id == bindparam("fo_id"))
# Read again under the lock, over whatever the session held: the caller decides on this state.
_GET_LOCKED = _GET.with_for_update().execution_options(populate_existing=True)


def get(session: Session, fo_id: int, *, lock: bool = False) -> FulfillmentOrder | None:
    return session.scalars(_GET_LOCKED if lock else _GET, {"fo_id": fo_id}).one_or_none()


def get_for_service(
    session: Session, fo_id: int, service_id: int | None, *, lock: bool = False
) -> FulfillmentOrder:
    """The fulfillment order, if the caller may see it (a service sees only its own)."""
    fo = get(session, fo_id, lock=lock)
    if fo is None or (service_id is not None and fo.fulfillment_service_id != service_id):
        raise NotFound("Not Found")
    return fo


def assigned(
    service_id: int | BindParameter[int] | None,
    *,
    request_status: FORequestStatus | None = None,
    location_ids: Sequence[int] | None = None,
) -> Select[FulfillmentOrder]:
    """Shopify's assigned fulfillment orders, unordered: those of service `service_id` (None: every
    service's), in `request_status` if given, else every one that is not closed or cancelled, at
    `location_ids` if given. The REST list and the GraphQL connection order and page it. `service_id` may be
    a bound parameter, for a statement built once and run for any service."""
    stmt = select(FulfillmentOrder).where(FulfillmentOrder.fulfillment_service_id.is_not(None))
    if service_id is not None:
        stmt = stmt.where(FulfillmentOrder.fulfillment_service_id == service_id)
    if request_status is not None:
        stmt = stmt.where(FulfillmentOrder.request_status == request_status)
    else:
        stmt = stmt.where(FulfillmentOrder.status.not_in((FOStatus.closed, FOStatus.cancelled)))
    if location_ids:
        stmt = stmt.where(FulfillmentOrder.assigned_location_id.in_(location_ids))
    return stmt


def line_items(session: Session, fo_id: int) -> list[FulfillmentOrderLineItem]:
    return list(
        session.scalars(
            select(FulfillmentOrderLineItem)
            .where(FulfillmentOrderLineItem.fulfillment_order_id == fo_id)
            .order_by(FulfillmentOrderLineItem.id)
        )
    )


def needs_service_consent(fo: FulfillmentOrder) -> bool:
    return _needs_consent(fo.request_status, fo.status, assigned=fo.fulfillment_service_id is not None)


def split(
    session: Session, fo: FulfillmentOrder, line: FulfillmentOrderLineItem, quantity: int
) -> FulfillmentOrder:
    """Move `quantity` of `line` into a new fulfillment order, so the part to cancel is a whole one."""
    if quantity <= 0 or quantity > line.quantity:
        raise Invalid(f"cannot split {quantity} of a line of {line.quantity}")
    lines = line_items(session, fo.id)
    if len(lines) == 1 and line.quantity == quantity:
        return fo
    part = FulfillmentOrder(
        order_id=fo.order_id,
        fulfillment_service_id=fo.fulfillment_service_id,
        assigned_location_id=fo.assigned_location_id,
        request_status=fo.request_status,
        status=fo.status,
        destination=dict(fo.destination),
        origin=dict(fo.origin),
        split_from_id=fo.id,
        version=1,
    )
    session.add(part)
    session.flush()
    line.quantity -= quantity
    line.fulfillable_quantity = max(0, min(line.fulfillable_quantity - quantity, line.quantity))
    session.add(
        FulfillmentOrderLineItem(
            fulfillment_order_id=part.id,
            order_item_id=line.order_item_id,
            quantity=quantity,
            fulfillable_quantity=quantity,
        )
    )
    session.flush()
    transitions.record_event(
        session,
        "fulfillment_order",
        fo.id,
        "fulfillment_order.split",
        data={"new_fulfillment_order_id": part.id, "order_item_id": line.order_item_id, "quantity": quantity},
    )
    return part


def cancel_directly(
    session: Session, fo: FulfillmentOrder, *, reason: str, plan_id: int | None = None
) -> bool:
    """Shopify's direct cancel, for work the service has not accepted (it is not told).

    `plan_id`: the cancellation plan the fulfillment order is given to, with the same move.
    """
    request_status = None
    if fo.request_status not in (FORequestStatus.unsubmitted, FORequestStatus.closed):
        request_status = FORequestStatus.closed
    return transitions.move_fulfillment_order(
        session,
        fo,
        request_status=request_status,
        status=FOStatus.cancelled,
        data={"reason": reason},
        cancellation_plan_id=plan_id,
    )


def request_cancellation(
    session: Session, fo: FulfillmentOrder, *, message: str | None, plan_id: int | None = None
) -> MerchantRequest:
    """Mark the fulfillment order `cancellation_requested` and record the outgoing request.

    `plan_id`: the cancellation plan the fulfillment order is given to, with the same move.
    """
    if fo.fulfillment_service_id is None:
        raise InvalidTransition(
            "Fulfillment order is not assigned to a fulfillment service.", code="not_assigned"
        )
    if not needs_service_consent(fo):
        raise InvalidTransition(
            f"Fulfillment order is not in a state to request cancellation "
            f"(request_status {fo.request_status.value}, status {fo.status.value}).",
            code="invalid_state",
        )
    transitions.move_fulfillment_order(
        session,
        fo,
        request_status=FORequestStatus.cancellation_requested,
        data={"message": message},
        cancellation_plan_id=plan_id,
    )
    request = MerchantRequest(
        fulfillment_order_id=fo.id,
        kind=MerchantRequestKind.cancellation_request,
        message=message,
        request_options={},
        sent_at=now(),
        reminders_sent=0,
        escalated=False,
    )
    session.add(request)
    session.flush()
    return request


_OPEN_CANCELLATION_REQUEST = (
    select(MerchantRequest)
    .where(
        MerchantRequest.fulfillment_order_id == bindparam("fo_id"),
        MerchantRequest.kind == MerchantRequestKind.cancellation_request,
    )
    .order_by(MerchantRequest.id.desc())
    .limit(1)
)


# The id of that request, as a scalar subquery (for a statement that changes it).
OPEN_CANCELLATION_REQUEST_ID = (
    select(MerchantRequest.id)
    .where(
        MerchantRequest.fulfillment_order_id == bindparam("fo_id"),
        MerchantRequest.kind == MerchantRequestKind.cancellation_request,
    )
    .order_by(MerchantRequest.id.desc())
    .limit(1)
    .scalar_subquery()
)


def open_cancellation_request(session: Session, fo_id: int) -> MerchantRequest | None:
    return session.scalars(_OPEN_CANCELLATION_REQUEST, {"fo_id": fo_id}).one_or_none()


def open_cancellation_requests(session: Session, fo_ids: Sequence[int]) -> dict[int, MerchantRequest]:
    """`open_cancellation_request` of each of `fo_ids` in one query: fulfillment order id -> its latest
    cancellation request (absent when it has none)."""
    if not fo_ids:
        return {}
    rows = session.scalars(
        select(MerchantRequest)
        .where(
            MerchantRequest.fulfillment_order_id.in_(sorted(set(fo_ids))),
            MerchantRequest.kind == MerchantRequestKind.cancellation_request,
        )
        .order_by(MerchantRequest.fulfillment_order_id, MerchantRequest.id.desc())
        .ext(distinct_on(MerchantRequest.fulfillment_order_id))
    )
    return {row.fulfillment_order_id: row for row in rows}
