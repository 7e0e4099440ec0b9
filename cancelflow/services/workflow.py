"""How a cancellation moves: approve, route, notify, reply, settle, close.

Each step function runs inside the transaction that claimed its step row, makes its change, finishes the
step and asks for the next one after commit. Every status change goes through `transitions.move`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, NamedTuple, TypeVar

from sqlalchemy import Select, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from cancelflow import integrations
from cancelflow.config import get_settings
from cancelflow.errors import AlreadyHandled, NotFound, PermanentError, Refused
from cancelflow.models import (
    CancellationPlan,
    CancellationRequest,
    FulfillmentOrder,
    FulfillmentOrderLineItem,
    FulfillmentService,
    LoyaltyLedgerEntry,
    MoneyTransaction,
    Order,
    OrderItem,
    Payment,
    WorkflowStep,
)
from cancelflow.models.base import table_of
from cancelflow.models.enums import (
    CancellationType,
    FORequestStatus,
    FOStatus,
    PlanStatus,
    RefundTarget,
    RejectionCode,
    RequestStatus,
    StepKind,
    StepStatus,
)
from cancelflow.models.transitions import EscalationState, allows, escalation_of, require
from cancelflow.services import fulfillment_orders as fos
from cancelflow.services import steps, transitions
from cancelflow.services.clock import now
from cancelflow.services.money import STEP_FOR_TARGET, is_money_key, money_key, plan_amount, refund_target

log = logging.getLogger(__name__)

MONEY_KINDS = frozenset(STEP_FOR_TARGET.values())
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


_FRESH: dict[type[Any], Select[Any]] = {}
_PLAN_AND_REQUEST = (
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
    plan, request = session.execute(_PLAN_AND_REQUEST, {"plan_id": plan_id}).one()
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


# --- validate and approve -------------------------------------------------------------------------


def validate_step(session: Session, step: WorkflowStep) -> None:
    """Re-check the request under the order lock, then apply the approval rule from settings."""
    assert step.request_id is not None
    if get_settings().approval_rule == "auto":
        order = lock_order_of(session, step.request_id)
        request = fresh(session, CancellationRequest, step.request_id)
        if request.status == RequestStatus.waiting:
            approve(session, request, actor="auto-approval rule", locked_order=order)
    steps.finish(session, step, {"approval_rule": get_settings().approval_rule})


_PRICE_AND_PAYMENT = (
    select(OrderItem.unit_price, Payment.method)
    .outerjoin(Payment, Payment.order_id == OrderItem.order_id)
    .where(OrderItem.id == bindparam("item_id"))
)


def approve(
    session: Session, request: CancellationRequest, *, actor: str, locked_order: LockedOrder | None = None
) -> CancellationPlan:
    """Approve a waiting request: make its plan and start routing.

    `locked_order`: the caller already holds the order lock and read `request` after taking it.
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
    unit_price, payment_method = session.execute(_PRICE_AND_PAYMENT, {"item_id": request.order_item_id}).one()
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
    transitions.record_event(
        session,
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
    steps.create(
        session,
        request_id=request.id,
        plan_id=plan.id,
        kind=StepKind.route,
        idempotency_key=f"{plan.id}:route:1",
    )
    return plan


def reject_request(
    session: Session, request: CancellationRequest, *, code: RejectionCode, message: str | None
) -> bool:
    """End a request as rejected and give its quantity back to the order item."""
    if not transitions.move(
        session,
        request,
        RequestStatus.rejected,
        rejection_code=code.value,
        rejection_message=message,
        data={"code": code.value, "message": message},
    ):
        return False
    session.execute(
        update(OrderItem)
        .where(OrderItem.id == request.order_item_id)
        .values(requested_quantity=OrderItem.requested_quantity - request.quantity)
    )
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
    reject_request(session, request, code=code, message=message)


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


# --- route ------------------------------------------------------------------------------------------


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
        part.cancellation_plan_id = plan.id
        if fos.needs_service_consent(part):
            fos.request_cancellation(session, part, message=request.description or "Cancellation requested")
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
            fos.cancel_directly(session, part, reason=f"cancellation plan {plan.id}")
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


# --- replies ------------------------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class ReplyOutcome:
    fulfillment_order: FulfillmentOrder
    applied: bool
    error: str | None = None


def answer_cancellation(
    session: Session,
    fo_id: int,
    *,
    decision: Literal["accept", "reject"],
    message: str | None,
    service_id: int | None,
) -> ReplyOutcome:
    """Apply a service's accept/reject once; record every other reply (duplicates, late, wrong state).

    Returns an outcome with `error` set instead of raising, so the caller commits the recorded event.
    """
    # The order lock first (found through the fulfillment order), then the fulfillment order read under it.
    session.connection().execute(_LOCK_ORDER_OF_FO, {"fo_id": fo_id}).one_or_none()
    fo = fos.get_for_service(session, fo_id, service_id, lock=True)
    accepted = decision == "accept"
    done_state = FORequestStatus.cancellation_accepted if accepted else FORequestStatus.cancellation_rejected
    if not allows("fulfillment_order.request_status", fo.request_status, done_state):
        last = fos.open_cancellation_request(session, fo.id)
        # A request closed at the reply deadline (or by staff) was never answered (no responded_at): a
        # reply to it now is late, not a duplicate, even when it says what the deadline action did.
        if fo.request_status == done_state and (last is None or last.responded_at is not None):
            transitions.record_event(
                session,
                "fulfillment_order",
                fo.id,
                "reply.duplicate",
                data={"decision": decision, "message": message},
            )
            return ReplyOutcome(fo, applied=False)
        transitions.record_event(
            session,
            "fulfillment_order",
            fo.id,
            "reply.ignored",
            data={
                "decision": decision,
                "message": message,
                "flagged": True,
                "request_status": fo.request_status.value,
                "after_deadline": last is not None and last.responded_at is None,
            },
        )
        return ReplyOutcome(
            fo,
            applied=False,
            error="Fulfillment order does not have a pending cancellation request.",
        )
    merchant_request = fos.open_cancellation_request(session, fo.id)
    if merchant_request is not None:
        merchant_request.response = "accepted" if accepted else "rejected"
        merchant_request.response_message = message
        merchant_request.responded_at = now()
    transitions.move_fulfillment_order(
        session,
        fo,
        request_status=done_state,
        status=FOStatus.cancelled if accepted else FOStatus.in_progress,
        data={"message": message},
    )
    if fo.cancellation_plan_id is not None:
        plan = fresh(session, CancellationPlan, fo.cancellation_plan_id)
        if (
            plan.escalated_at is not None
            and escalation_of(plan.status, plan.escalated_at) == EscalationState.escalated
        ):
            # Escalated at the deadline but not yet decided by staff: the answer still counts (it is
            # applied below), and staff see that it came late.
            transitions.record_event(
                session,
                "plan",
                plan.id,
                "reply.late",
                data={
                    "decision": decision,
                    "fulfillment_order_id": fo.id,
                    "escalated_at": plan.escalated_at.isoformat(),
                    "applied": True,
                    "flagged": True,
                },
            )
        if plan.status != PlanStatus.confirmation_waiting:
            # The plan moved on (escalated, failed, staff decision): keep the answer, flag it for staff.
            transitions.record_event(
                session,
                "plan",
                plan.id,
                "reply.flagged",
                data={
                    "decision": decision,
                    "fulfillment_order_id": fo.id,
                    "plan_status": plan.status.value,
                    "flagged": True,
                },
            )
        elif accepted:
            _confirm_if_all_accepted(session, plan)
        else:
            reject_plan(
                session,
                session.get_one(CancellationRequest, plan.request_id),
                plan,
                actor="fulfillment service",
                code=RejectionCode.fulfillment_rejected,
                message=message or "rejected by the fulfillment service",
                data={"fulfillment_order_id": fo.id},
            )
    return ReplyOutcome(fo, applied=True)


_STILL_WAITING = (
    select(func.count())
    .select_from(FulfillmentOrder)
    .where(
        FulfillmentOrder.cancellation_plan_id == bindparam("plan_id"),
        FulfillmentOrder.request_status == FORequestStatus.cancellation_requested,
    )
)


def _confirm_if_all_accepted(session: Session, plan: CancellationPlan) -> None:
    still_waiting = session.connection().execute(_STILL_WAITING, {"plan_id": plan.id}).scalar()
    if still_waiting == 0:
        confirm(session, plan, note="accepted by the fulfillment service")


# --- money and close --------------------------------------------------------------------------------


def confirm(session: Session, plan: CancellationPlan, *, note: str) -> None:
    """The goods are stopped: move the plan on to money, one step per refund target."""
    transitions.move(session, plan, PlanStatus.confirmed, data={"note": note})
    transitions.move(session, plan, PlanStatus.waiting_for_payment)
    if plan.amount > 0:
        steps.create(
            session,
            request_id=plan.request_id,
            plan_id=plan.id,
            kind=STEP_FOR_TARGET[plan.refund_target],
            idempotency_key=money_key(plan.id, plan.refund_target),
        )
    else:
        _close_when_paid(session, plan)


# The plan with what paying it needs: its request, the order and the order's payment, in one round trip.
_MONEY_CONTEXT = (
    select(CancellationPlan, CancellationRequest, Order, Payment)
    .join(CancellationRequest, CancellationRequest.id == CancellationPlan.request_id)
    .join(Order, Order.id == CancellationRequest.order_id)
    .outerjoin(Payment, Payment.order_id == Order.id)
    .where(CancellationPlan.id == bindparam("plan_id"))
)
_MONEY_BY_KEY = select(MoneyTransaction).where(MoneyTransaction.idempotency_key == bindparam("key"))


def money_step(session: Session, step: WorkflowStep) -> None:
    """Move the money once: the step's idempotency key goes to the connector and into a unique row."""
    plan, request, order, payment = session.execute(_MONEY_CONTEXT, {"plan_id": step.plan_id}).one()
    _check_money_step(step, plan)
    if plan.status != PlanStatus.waiting_for_payment:
        steps.finish(session, step, {"skipped": plan.status.value})
        return
    existing = session.scalars(_MONEY_BY_KEY, {"key": step.idempotency_key}).one_or_none()
    if existing is not None:
        steps.finish(session, step, {"external_id": existing.external_id, "already_recorded": True})
        _close_when_paid(session, plan)
        return
    target = plan.refund_target
    replayed = False
    if target == RefundTarget.original_payment:
        if payment is None or not payment.reference:
            raise PermanentError(f"payment of order {order.number} has no reference to refund against")
        movement = integrations.payment_gateway().refund(
            payment_reference=payment.reference,
            amount=plan.amount,
            currency=plan.currency,
            idempotency_key=step.idempotency_key,
        )
        external_id, replayed = movement.external_id, movement.replayed
    elif target == RefundTarget.bank_transfer:
        if not request.iban or not request.holder_name:
            raise PermanentError("bank transfer needs an IBAN and a holder name")
        movement = integrations.bank_transfer().transfer(
            iban=request.iban,
            holder_name=request.holder_name,
            amount=plan.amount,
            currency=plan.currency,
            idempotency_key=step.idempotency_key,
        )
        external_id, replayed = movement.external_id, movement.replayed
    else:
        external_id = _credit_loyalty(session, plan, order, step.idempotency_key)
    session.execute(
        insert(MoneyTransaction)
        .values(
            plan_id=plan.id,
            step_id=step.id,
            target=target,
            amount=plan.amount,
            currency=plan.currency,
            idempotency_key=step.idempotency_key,
            external_id=external_id,
        )
        .on_conflict_do_nothing(index_elements=[MoneyTransaction.idempotency_key])
    )
    transitions.record_event(
        session,
        "plan",
        plan.id,
        "money.moved",
        data={
            "target": target.value,
            "amount": str(plan.amount),
            "currency": plan.currency,
            "external_id": external_id,
            "replayed": replayed,
        },
    )
    steps.finish(session, step, {"external_id": external_id, "replayed": replayed})
    _close_when_paid(session, plan)


def _check_money_step(step: WorkflowStep, plan: CancellationPlan) -> None:
    """Money is keyed by the plan's own money step: its kind is the plan's target's, its key
    `{plan_id}:{target}:{n}`. Anything else moves no money, whatever step it is."""
    target = plan.refund_target
    if step.kind != STEP_FOR_TARGET[target] or not is_money_key(step.idempotency_key, plan.id, target):
        raise Refused(
            f"step {step.id} ({step.kind.value}, key {step.idempotency_key}) is not the {target.value} "
            f"money step of plan {plan.id}",
            reason="mismatch",
            kind=step.kind.value,
        )


def _credit_loyalty(session: Session, plan: CancellationPlan, order: Order, key: str) -> str:
    entry_id = session.scalar(
        insert(LoyaltyLedgerEntry)
        .values(
            customer_id=order.customer_id,
            plan_id=plan.id,
            amount=plan.amount,
            currency=plan.currency,
            idempotency_key=key,
            description=f"refund of cancellation plan {plan.id}",
        )
        .on_conflict_do_nothing(index_elements=[LoyaltyLedgerEntry.idempotency_key])
        .returning(LoyaltyLedgerEntry.id)
    )
    if entry_id is None:  # credited before under this key: the ledger row is the one movement
        entry_id = session.scalars(
            select(LoyaltyLedgerEntry.id).where(LoyaltyLedgerEntry.idempotency_key == key)
        ).one()
    return f"loyalty:{entry_id}"


_LOCK_PLAN = select(CancellationPlan.id).where(CancellationPlan.id == bindparam("plan_id")).with_for_update()
_UNPAID = (
    select(func.count())
    .select_from(WorkflowStep)
    .where(
        WorkflowStep.plan_id == bindparam("plan_id"),
        WorkflowStep.kind.in_(sorted(MONEY_KINDS)),
        WorkflowStep.status != StepStatus.done,
    )
)


# The plan and its request (fresh, after the order lock) with the count of its unpaid money steps: one trip.
_CLOSE_CONTEXT = _PLAN_AND_REQUEST.add_columns(
    select(func.count())
    .select_from(WorkflowStep)
    .where(
        WorkflowStep.plan_id == CancellationPlan.id,
        WorkflowStep.kind.in_(sorted(MONEY_KINDS)),
        WorkflowStep.status != StepStatus.done,
    )
    .scalar_subquery()
)


def _close_when_paid(session: Session, plan: CancellationPlan) -> None:
    # Serialise the "was that the last money step?" question per plan.
    connection = session.connection()
    connection.execute(_LOCK_PLAN, {"plan_id": plan.id})
    unpaid = connection.execute(_UNPAID, {"plan_id": plan.id}).scalar()
    if unpaid == 0:
        steps.create(
            session,
            request_id=plan.request_id,
            plan_id=plan.id,
            kind=StepKind.close,
            idempotency_key=f"{plan.id}:close:1",
        )


def close_step(session: Session, step: WorkflowStep) -> None:
    """Complete the plan and its request."""
    assert step.request_id is not None
    assert step.plan_id is not None
    lock_order_of(session, step.request_id)
    plan, request, unpaid = session.execute(_CLOSE_CONTEXT, {"plan_id": step.plan_id}).one()
    if unpaid:
        # A close step is made only once every money step is done: this one was not made that way.
        raise Refused(
            f"plan {plan.id} still has {unpaid} money step(s) to run; close refused",
            reason="mismatch",
            kind=step.kind.value,
        )
    if plan.status == PlanStatus.waiting_for_payment:
        transitions.move(session, plan, PlanStatus.completed)
        if request.status == RequestStatus.approved:
            transitions.move(session, request, RequestStatus.completed)
    steps.finish(session, step, {"plan_status": plan.status.value})
