"""Approval and rejection: a waiting request gets its plan and starts routing, or ends rejected.

`reject_plan` is the one way a request and its plan are rejected, whoever decides it (staff, the reply
deadline, the fulfillment service). Every status change goes through `transitions.move`.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from cancelflow.config import get_settings
from cancelflow.errors import AlreadyHandled
from cancelflow.models import (
    CancellationPlan,
    CancellationRequest,
    FulfillmentOrder,
    OrderItem,
    Payment,
    WorkflowStep,
)
from cancelflow.models.enums import (
    FORequestStatus,
    FOStatus,
    PaymentMethod,
    PlanStatus,
    RefundTarget,
    RejectionCode,
    RequestStatus,
    StepKind,
    StepStatus,
)
from cancelflow.models.transitions import allows, require
from cancelflow.services import fulfillment_orders as fos
from cancelflow.services import intake, steps, transitions
from cancelflow.services.locking import LockedOrder, lock_order, lock_order_of
from cancelflow.services.money import plan_amount, refund_target


def validate_step(session: Session, step: WorkflowStep) -> None:
    """Re-check the request under the order lock, then apply the approval rule from settings."""
    assert step.request_id is not None
    if get_settings().approval_rule == "auto":
        order = lock_order_of(session, step.request_id)
        # The request, fresh under the lock, with the item's price and the payment method a plan needs.
        request, unit_price, payment_method = session.execute(
            _REQUEST_PRICE_AND_PAYMENT, {"request_id": step.request_id}
        ).one()
        if request.status == RequestStatus.waiting:
            approve(
                session,
                request,
                actor="auto-approval rule",
                locked_order=order,
                price_and_payment=(unit_price, payment_method),
            )
    steps.finish(session, step, {"approval_rule": get_settings().approval_rule})


_PRICE_AND_PAYMENT = (
    select(OrderItem.unit_price, Payment.method)
    .outerjoin(Payment, Payment.order_id == OrderItem.order_id)
    .where(OrderItem.id == bindparam("item_id"))
)
_REQUEST_PRICE_AND_PAYMENT = (
    select(CancellationRequest, OrderItem.unit_price, Payment.method)
    .join(OrderItem, OrderItem.id == CancellationRequest.order_item_id)
    .outerjoin(Payment, Payment.order_id == OrderItem.order_id)
    .where(CancellationRequest.id == bindparam("request_id"))
    .execution_options(populate_existing=True)
)


def approve(
    session: Session,
    request: CancellationRequest,
    *,
    actor: str,
    locked_order: LockedOrder | None = None,
    price_and_payment: tuple[Decimal, PaymentMethod | None] | None = None,
) -> CancellationPlan:
    """Approve a waiting request: make its plan and start routing.

    `locked_order`: the caller already holds the order lock and read `request` after taking it.
    `price_and_payment`: the item's unit price and the order's payment method, when the caller read them.
    """
    order = locked_order
    if order is None:
        order = lock_order(session, request.order_id)
        session.refresh(request)
    require(
        "request",
        request.status,
        RequestStatus.approved,
        message=f"request {request.id} is {request.status.value}, only a waiting request can be approved",
    )
    if not transitions.move(session, request, RequestStatus.approved, data={"actor": actor}):
        raise AlreadyHandled(f"request {request.id} moved while approving")
    if price_and_payment is None:
        row = session.execute(_PRICE_AND_PAYMENT, {"item_id": request.order_item_id}).one()
        price_and_payment = (row.unit_price, row.method)
    unit_price, payment_method = price_and_payment
    target = (
        refund_target(loyalty=request.fully_refund_as_loyalty_money, payment_method=payment_method)
        if payment_method is not None
        else RefundTarget.loyalty_money
    )
    plan = CancellationPlan(
        request_id=request.id,
        status=PlanStatus.waiting,
        plan_type=request.cancellation_type,
        amount=plan_amount(unit_price, request.quantity),
        currency=order.currency,
        refund_target=target,
        version=1,
    )
    session.add(plan)
    session.flush()
    created = transitions.event_row(
        "plan",
        plan.id,
        "plan.created",
        to_status=plan.status.value,
        data={
            "request_id": request.id,
            "amount": str(plan.amount),
            "currency": plan.currency,
            "refund_target": target.value,
        },
    )
    steps.create_for_plan(session, plan, StepKind.route, event=created)
    return plan


def reject_request(
    session: Session,
    request: CancellationRequest,
    *,
    code: RejectionCode,
    message: str | None,
    actor: str | None = None,
) -> bool:
    """End a request as rejected and give its quantity back to the order item; `actor`, who decided it,
    is recorded in the event when known."""
    if not transitions.move(
        session,
        request,
        RequestStatus.rejected,
        rejection_code=code.value,
        rejection_message=message,
        data={"code": code.value, "message": message, **({"actor": actor} if actor else {})},
    ):
        return False
    intake.release_quantity(session, request.order_item_id, request.quantity)
    return True


# What the merchant request of a fulfillment order still asked records when its plan is rejected by staff.
WITHDRAWN = "withdrawn"
# The steps a rejection cancels: those the step machine lets go to `cancelled`.
OPEN_STEP_STATUSES = sorted(status for status in StepStatus if allows("step", status, StepStatus.cancelled))


def reject_plan(
    session: Session,
    request: CancellationRequest,
    plan: CancellationPlan | None,
    *,
    actor: str,
    code: RejectionCode,
    message: str,
    unanswered: str = WITHDRAWN,
    data: dict[str, object] | None = None,
) -> None:
    """Reject a request and its plan (if it has one), whoever decided it: staff, the reply deadline, the service.

    The one way to do it, under the order lock: every fulfillment order of the plan still asked is withdrawn
    (its merchant request answered `unanswered`, the service keeps the work), the plan ends `rejected`, the
    request's open steps are cancelled and the request ends `rejected` with its quantity given back.
    Nothing is written when the machines refuse either move.
    """
    require(
        "request",
        request.status,
        RequestStatus.rejected,
        message=f"Cannot reject a request that is {request.status.value}.",
    )
    if plan is not None:
        require(
            "plan",
            plan.status,
            PlanStatus.rejected,
            message=f"Cannot reject: its plan is {plan.status.value} (the goods are stopped and the refund is "
            "under way).",
        )
        if plan.status == PlanStatus.failed and plan.failed_from is not None:
            # A failed plan is rejected only if it could have been from where it stopped: not once the money
            # was on its way.
            require(
                "plan",
                PlanStatus(plan.failed_from),
                PlanStatus.rejected,
                message=f"Cannot reject: its plan failed in {plan.failed_from} (the goods are stopped and the "
                "refund is under way).",
            )
        _withdraw(session, plan, actor=actor, unanswered=unanswered, note=message)
        transitions.move(
            session, plan, PlanStatus.rejected, data={"actor": actor, "message": message, **(data or {})}
        )
    _cancel_open_steps(session, request.id)
    reject_request(session, request, code=code, message=message, actor=actor)


_ASKED = (
    select(FulfillmentOrder)
    .where(
        FulfillmentOrder.cancellation_plan_id == bindparam("plan_id"),
        FulfillmentOrder.request_status == FORequestStatus.cancellation_requested,
    )
    .order_by(FulfillmentOrder.id)
    .with_for_update()
    .execution_options(populate_existing=True)
)


def _withdraw(session: Session, plan: CancellationPlan, *, actor: str, unanswered: str, note: str) -> None:
    """Shopify has no call to withdraw a cancellation request: the request is closed on our side (the
    service's later accept or reject is answered 422 and recorded), and an event says it was withdrawn."""
    for fo in session.scalars(_ASKED, {"plan_id": plan.id}).all():
        merchant_request = fos.open_cancellation_request(session, fo.id)
        if merchant_request is not None and merchant_request.response is None:
            merchant_request.response = unanswered
            merchant_request.response_message = note
        # The service keeps the work, as after its own rejection.
        transitions.move_fulfillment_order(
            session,
            fo,
            request_status=FORequestStatus.cancellation_rejected,
            status=FOStatus.in_progress,
            data={"withdrawn": True, "actor": actor, "reason": note},
        )
        transitions.record_event(
            session,
            "fulfillment_order",
            fo.id,
            "fulfillment_order.cancellation_withdrawn",
            data={"plan_id": plan.id, "actor": actor, "response": unanswered},
        )


def _cancel_open_steps(session: Session, request_id: int) -> None:
    # SKIP LOCKED: a step a worker is running right now finds the plan stopped and finishes as skipped.
    open_steps = session.scalars(
        select(WorkflowStep)
        .where(
            WorkflowStep.request_id == request_id,
            WorkflowStep.status.in_(OPEN_STEP_STATUSES),
        )
        .with_for_update(skip_locked=True)
    ).all()
    for step in open_steps:
        transitions.move(session, step, StepStatus.cancelled, data={"reason": "request rejected"})
