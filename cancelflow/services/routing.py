"""Routing: the plan's fulfillment orders are cancelled here or their services are asked to consent.

Each step function runs inside the transaction that claimed its step row, makes its change, finishes the
step and asks for the next one after commit. Staff asking a service directly (`send_cancellation_request`)
makes the same notify step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from cancelflow import integrations
from cancelflow.errors import NotFound
from cancelflow.models import (
    CancellationPlan,
    CancellationRequest,
    FulfillmentOrder,
    FulfillmentOrderLineItem,
    FulfillmentService,
    WorkflowStep,
)
from cancelflow.models.enums import (
    CancellationType,
    FORequestStatus,
    PlanStatus,
    StepKind,
)
from cancelflow.services import fulfillment_orders as fos
from cancelflow.services import steps, transitions
from cancelflow.services.clock import now
from cancelflow.services.locking import lock_order, lock_order_of, plan_and_request
from cancelflow.services.settlement import confirm


def route_step(session: Session, step: WorkflowStep) -> None:
    """Cancel what the services have not accepted; ask them about the rest."""
    assert step.request_id is not None
    assert step.plan_id is not None
    lock_order_of(session, step.request_id)
    plan, request = plan_and_request(session, step.plan_id)
    if plan.status != PlanStatus.waiting:
        steps.finish(session, step, {"skipped": plan.status.value})
        return
    allocation = Allocation()
    if request.cancellation_type == CancellationType.cancel:
        allocation = _allocate(session, plan, request)
    asked, cancelled = allocation.asked, allocation.cancelled
    if asked:
        deadline = now() + timedelta(seconds=min(allocation.reply_deadlines))
        transitions.move(
            session,
            plan,
            PlanStatus.confirmation_waiting,
            deadline_at=deadline,
            data={"fulfillment_orders": asked},
        )
    else:
        confirm(session, plan, note="nothing held by a fulfillment service")
    steps.finish(session, step, {"asked": asked, "cancelled_locally": cancelled})


@dataclass(slots=True)
class Allocation:
    asked: list[int] = field(default_factory=list)  # fulfillment orders whose service must consent
    cancelled: list[int] = field(default_factory=list)  # cancelled here, no service involved
    reply_deadlines: list[int] = field(default_factory=list)  # seconds, of the services asked


# The open lines holding the item, with the reply deadline of the service holding each: one round trip.
_OPEN_LINES = (
    select(
        FulfillmentOrderLineItem,
        FulfillmentOrder,
        FulfillmentService.reply_deadline_seconds,
    )
    .join(FulfillmentOrder, FulfillmentOrder.id == FulfillmentOrderLineItem.fulfillment_order_id)
    .outerjoin(FulfillmentService, FulfillmentService.id == FulfillmentOrder.fulfillment_service_id)
    .where(
        FulfillmentOrderLineItem.order_item_id == bindparam("order_item_id"),
        FulfillmentOrderLineItem.quantity > 0,
        FulfillmentOrder.status.in_(fos.OPEN_STATUSES),
        FulfillmentOrder.cancellation_plan_id.is_(None),
    )
    .order_by(FulfillmentOrder.id)
    .with_for_update(of=FulfillmentOrder)
)


def _allocate(session: Session, plan: CancellationPlan, request: CancellationRequest) -> Allocation:
    rows = session.execute(_OPEN_LINES, {"order_item_id": request.order_item_id}).all()
    remaining = request.quantity
    allocation = Allocation()
    asked, cancelled = allocation.asked, allocation.cancelled
    for line, fo, reply_deadline in rows:
        if remaining <= 0:
            break
        quantity = min(remaining, line.quantity)
        # split() counts the order's lines itself, now that the lock is held: a count read with these rows
        # would come from the snapshot taken before the lock wait and miss a line an import added meanwhile.
        part = fos.split(session, fo, line, quantity)
        # The part is given to the plan by the move below, in its statement (the part is locked or new).
        if fos.needs_service_consent(part):
            fos.request_cancellation(
                session, part, message=request.description or "Cancellation requested", plan_id=plan.id
            )
            steps.create(
                session,
                request_id=request.id,
                plan_id=plan.id,
                kind=StepKind.notify,
                fulfillment_order_id=part.id,
                idempotency_key=f"{plan.id}:notify:{part.id}:1",
            )
            asked.append(part.id)
            allocation.reply_deadlines.append(reply_deadline)
        else:
            fos.cancel_directly(session, part, reason=f"cancellation plan {plan.id}", plan_id=plan.id)
            cancelled.append(part.id)
        remaining -= quantity
    session.flush()
    return allocation


_FO_AND_SERVICE = (
    select(FulfillmentOrder, FulfillmentService)
    .outerjoin(FulfillmentService, FulfillmentService.id == FulfillmentOrder.fulfillment_service_id)
    .where(FulfillmentOrder.id == bindparam("fo_id"))
)


def notify_step(session: Session, step: WorkflowStep) -> None:
    """Tell the service it has a cancellation request to pull (unless it already answered)."""
    assert step.fulfillment_order_id is not None
    fo, service = session.execute(_FO_AND_SERVICE, {"fo_id": step.fulfillment_order_id}).one()
    if fo.request_status != FORequestStatus.cancellation_requested or service is None:
        steps.finish(session, step, {"skipped": fo.request_status.value})
        return
    integrations.notifier().notify(
        callback_url=service.callback_url, secret=service.secret, kind="CANCELLATION_REQUEST"
    )
    steps.finish(session, step, {"notified": service.handle})


def send_cancellation_request(session: Session, fo_id: int, *, message: str | None) -> FulfillmentOrder:
    """Staff ask the fulfillment service to cancel a fulfillment order it accepted; the service is notified
    after commit. NotFound for no such order; a state that does not allow it raises (see `fos`)."""
    fo = fos.get(session, fo_id)
    if fo is None:
        raise NotFound("Not Found")
    # The workflow's lock order: the order row, then the fulfillment order.
    lock_order(session, fo.order_id)
    session.refresh(fo, with_for_update=True)
    merchant_request = fos.request_cancellation(session, fo, message=message)
    steps.create(
        session,
        request_id=None,
        kind=StepKind.notify,
        fulfillment_order_id=fo.id,
        idempotency_key=f"fo:{fo.id}:notify:{merchant_request.id}",
    )
    return fo
