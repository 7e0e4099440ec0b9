"""Settlement: a confirmed plan moves its money once per refund target, then closes with its request.

Each step function runs inside the transaction that claimed its step row, makes its change, finishes the
step and asks for the next one after commit. Money is keyed by the step's idempotency key, in a unique row.
"""

from __future__ import annotations

from sqlalchemy import bindparam, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from cancelflow import integrations
from cancelflow.errors import PermanentError, Refused
from cancelflow.models import (
    CancellationPlan,
    CancellationRequest,
    LoyaltyLedgerEntry,
    MoneyTransaction,
    Order,
    Payment,
    WorkflowStep,
)
from cancelflow.models.base import table_of
from cancelflow.models.enums import (
    PlanStatus,
    RefundTarget,
    RequestStatus,
    StepKind,
    StepStatus,
)
from cancelflow.services import steps, transitions
from cancelflow.services.locking import PLAN_AND_REQUEST, lock_order_of
from cancelflow.services.money import STEP_FOR_TARGET, is_money_key, money_key

MONEY_KINDS = frozenset(STEP_FOR_TARGET.values())


def confirm(session: Session, plan: CancellationPlan, *, note: str) -> None:
    """The goods are stopped: move the plan on to money, one step per refund target."""
    transitions.move(session, plan, PlanStatus.confirmed, data={"note": note})
    transitions.move(session, plan, PlanStatus.waiting_for_payment)
    if plan.amount > 0:
        steps.create_for_plan(
            session,
            plan,
            STEP_FOR_TARGET[plan.refund_target],
            idempotency_key=money_key(plan.id, plan.refund_target),
        )
    else:
        _close_when_paid(session, plan)


# The plan with what paying it needs: its request, the order and the order's payment, in one round trip.
# And the money already recorded under the step's key (a repeat after a crash), read under the step's lock.
_MONEY_CONTEXT = (
    select(CancellationPlan, CancellationRequest, Order, Payment, MoneyTransaction)
    .join(CancellationRequest, CancellationRequest.id == CancellationPlan.request_id)
    .join(Order, Order.id == CancellationRequest.order_id)
    .outerjoin(Payment, Payment.order_id == Order.id)
    .outerjoin(MoneyTransaction, MoneyTransaction.idempotency_key == bindparam("key"))
    .where(CancellationPlan.id == bindparam("plan_id"))
)
_MONEY_COLUMNS = ("plan_id", "step_id", "target", "amount", "currency", "idempotency_key", "external_id")
# The money row, once per key, with the `money.moved` event in the same round trip.
_RECORD_MONEY = transitions.carrying_event(
    insert(table_of(MoneyTransaction))
    .values({name: bindparam(name) for name in _MONEY_COLUMNS})
    .on_conflict_do_nothing(index_elements=[table_of(MoneyTransaction).c.idempotency_key])
)


def money_step(session: Session, step: WorkflowStep) -> None:
    """Move the money once: the step's idempotency key goes to the connector and into a unique row."""
    plan, request, order, payment, existing = session.execute(
        _MONEY_CONTEXT, {"plan_id": step.plan_id, "key": step.idempotency_key}
    ).one()
    _check_money_step(step, plan)
    if plan.status != PlanStatus.waiting_for_payment:
        steps.finish(session, step, {"skipped": plan.status.value})
        return
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
    session.connection().execute(
        _RECORD_MONEY,
        {
            "plan_id": plan.id,
            "step_id": step.id,
            "target": target,
            "amount": plan.amount,
            "currency": plan.currency,
            "idempotency_key": step.idempotency_key,
            "external_id": external_id,
            **transitions.event_row(
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
            ),
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
_CLOSE_CONTEXT = PLAN_AND_REQUEST.add_columns(
    select(func.count())
    .select_from(WorkflowStep)
    .where(
        WorkflowStep.plan_id == CancellationPlan.id,
        WorkflowStep.kind.in_(sorted(MONEY_KINDS)),
        WorkflowStep.status != StepStatus.done,
    )
    .scalar_subquery()
)


# The close step, inserted only when the plan has no unpaid money step: the question and the answer in one
# statement, read after the plan lock was taken.
_CLOSE_WHEN_PAID = steps.insert_when(
    ~select(WorkflowStep.id)
    .where(
        WorkflowStep.plan_id == bindparam("paid_plan_id"),
        WorkflowStep.kind.in_(sorted(MONEY_KINDS)),
        WorkflowStep.status != StepStatus.done,
    )
    .exists()
)


def _close_when_paid(session: Session, plan: CancellationPlan) -> None:
    # Serialise the "was that the last money step?" question per plan.
    connection = session.connection()
    connection.execute(_LOCK_PLAN, {"plan_id": plan.id})
    if steps.create_when(
        session, _CLOSE_WHEN_PAID, {"paid_plan_id": plan.id}, plan=plan, kind=StepKind.close
    ):
        return
    # Nothing inserted: money steps are unpaid, or the close step exists already (a repeat), which is then
    # asked for again as `create` does.
    unpaid = connection.execute(_UNPAID, {"plan_id": plan.id}).scalar()
    if unpaid == 0:
        steps.create_for_plan(session, plan, StepKind.close)


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
