"""Chasing fulfillment services for their reply: reminders, the reply deadline, escalation to staff.

Everything runs on database timers swept by beat (`fulfillment.chase_replies`), never on broker
countdowns. Each cancellation request sent to a service gets reminder *slots* at
`sent_at + k * reminder_interval` (k = 1 … reminder_count) that fall before the plan's `deadline_at`.
A chase sends at most one reminder per fulfillment order: after an outage it sends the latest elapsed
slot and skips the missed ones, so a service is never flooded with a burst of reminders.
`MerchantRequest.reminders_sent` is the last slot used, and the reminder's notify step key is
`{plan}:notify:{fo}:{slot + 1}` (the first notification is `…:1`), so a repeated chase sends nothing twice.

At the deadline the policy of the plan's strictest service (the shortest reply deadline, which is the
one that set `deadline_at`) decides:

`escalate`
    the plan stays `confirmation_waiting`, `escalated_at` is set, a `plan.escalated` event is written and
    reminders stop. Staff decide with `resolve()`; a reply that arrives first is still applied, and
    flagged (`reply.late`), because nobody has decided anything yet.
`cancel_locally`
    Shopify's direct cancel of every fulfillment order still waiting (request status `closed`), then the
    plan is confirmed and the money moves.
`reject`
    the cancellation request is withdrawn (fulfillment order back to `cancellation_rejected` /
    `in_progress`, the goods ship) and the plan and request are rejected.

For the last two the unanswered requests get `response = "no_reply"` (and no `responded_at`): a reply
arriving later finds no pending request, is refused (422) and recorded as a flagged `reply.ignored`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal, get_args

from pydantic import ValidationError
from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    DateTime,
    Integer,
    Interval,
    Row,
    Select,
    and_,
    any_,
    bindparam,
    exists,
    func,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.orm import Bundle, Session

from cancelflow.errors import Invalid, InvalidTransition, NotFound
from cancelflow.models import (
    CancellationPlan,
    CancellationRequest,
    FulfillmentOrder,
    FulfillmentService,
    MerchantRequest,
    Order,
)
from cancelflow.models.enums import (
    FORequestStatus,
    MerchantRequestKind,
    PlanStatus,
    RejectionCode,
    StepKind,
)
from cancelflow.models.transitions import EscalationState, allows, escalation_of
from cancelflow.services import approval, keyset, locking, settlement, steps, transitions
from cancelflow.services import fulfillment_orders as fos
from cancelflow.services.clock import now
from cancelflow.services.importer import ReplyPolicyIn
from cancelflow.services.webhooks import outbox as webhook_outbox

log = logging.getLogger(__name__)

CHASE_LOCK_KEY: Final = 0x63686173  # pg advisory lock id held by the one running chase ("chas")
# What an unanswered request records when the deadline (or staff) closed it; `responded_at` stays NULL.
NO_REPLY: Final = "no_reply"

DeadlineAction = Literal["escalate", "cancel_locally", "reject"]
Resolution = Literal["cancel_locally", "reject", "wait"]
DEADLINE_ACTIONS: Final[tuple[str, ...]] = get_args(DeadlineAction)
RESOLUTIONS: Final[tuple[str, ...]] = get_args(Resolution)


@dataclass
class ChaseResult:
    """What one chase did; `locked_out` means another chase held the lock and nothing was looked at."""

    locked_out: bool = False
    plans: int = 0
    reminders: int = 0
    escalated: int = 0
    cancelled_locally: int = 0
    rejected: int = 0


@dataclass(frozen=True, slots=True)
class Waiting:
    """One fulfillment order of a plan still waiting for its service's answer."""

    fo: FulfillmentOrder
    service: FulfillmentService
    request: MerchantRequest | None


@dataclass(frozen=True, slots=True)
class Escalation:
    """An escalated plan as staff see it in `cancelflow escalations`."""

    request_id: int
    plan_id: int
    merchant_request_ids: list[int]
    fulfillment_order_ids: list[int]
    services: list[str]
    sent_at: datetime | None
    deadline_at: datetime | None
    escalated_at: datetime
    reminders_sent: int


# --- the chase ------------------------------------------------------------------------------------------


def _reminder_due_at(slot: ColumnElement[int]) -> ColumnElement[datetime]:
    """`sent_at + slot * reminder_interval`, in SQL."""
    return MerchantRequest.sent_at + func.make_interval(
        0, 0, 0, 0, 0, 0, slot * FulfillmentService.reminder_interval_seconds, type_=Interval()
    )


def _due_plans_query() -> Select[int]:
    stamp = bindparam("stamp", type_=DateTime(timezone=True))
    next_reminder = _reminder_due_at(MerchantRequest.reminders_sent + 1)
    reminder_due = exists(
        select(MerchantRequest.id)
        .join(FulfillmentOrder, FulfillmentOrder.id == MerchantRequest.fulfillment_order_id)
        .join(FulfillmentService, FulfillmentService.id == FulfillmentOrder.fulfillment_service_id)
        .where(
            FulfillmentOrder.cancellation_plan_id == CancellationPlan.id,
            FulfillmentOrder.request_status == FORequestStatus.cancellation_requested,
            MerchantRequest.kind == MerchantRequestKind.cancellation_request,
            MerchantRequest.response.is_(None),
            MerchantRequest.reminders_sent < FulfillmentService.reminder_count,
            next_reminder <= stamp,
            next_reminder < CancellationPlan.deadline_at,
        )
    )
    return (
        select(CancellationPlan.id)
        .where(
            CancellationPlan.status == PlanStatus.confirmation_waiting,
            CancellationPlan.escalated_at.is_(None),
            or_(
                and_(CancellationPlan.deadline_at.is_not(None), CancellationPlan.deadline_at <= stamp),
                reminder_due,
            ),
        )
        .order_by(CancellationPlan.deadline_at, CancellationPlan.id)
        .limit(bindparam("limit", type_=Integer()))
        .with_for_update(of=CancellationPlan, skip_locked=True)
    )


# Built once: the chase runs every tick, and building and keying the statement cost more than running it.
_DUE_PLANS: Final = _due_plans_query()


def _due_plans(session: Session, stamp: datetime, limit: int) -> list[int]:
    return list(session.scalars(_DUE_PLANS, {"stamp": stamp, "limit": limit}))


def chase(session: Session, *, limit: int = 200) -> ChaseResult:
    """Send due reminders and apply due deadline actions, for at most `limit` plans.

    Runs under a transaction-scoped advisory lock (a second beat, or an overlapping chase, does nothing)
    and picks plans `FOR UPDATE SKIP LOCKED`. No per-plan savepoints: `jobs` sends on every
    `after_commit`, and SQLAlchemy fires that on a savepoint's release too, which would send the reminder
    tasks before their rows are committed. Every state is re-checked under the plan's lock, so a plan
    cannot fail half-way short of a database error, which rolls the whole chase back for the next beat.
    """
    if not session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": CHASE_LOCK_KEY}).scalar():
        log.info("another chase holds the lock; skipping")
        return ChaseResult(locked_out=True)
    stamp = now()
    result = ChaseResult()
    for plan_id in _due_plans(session, stamp, limit):
        _chase_plan(session, plan_id, stamp, result)
    if result.plans:
        log.info(
            "reply chase: %d plans, %d reminders, %d escalated, %d cancelled locally, %d rejected",
            result.plans,
            result.reminders,
            result.escalated,
            result.cancelled_locally,
            result.rejected,
        )
    return result


def _chase_plan(session: Session, plan_id: int, stamp: datetime, result: ChaseResult) -> None:
    plan = session.scalars(
        select(CancellationPlan)
        .where(CancellationPlan.id == plan_id)
        .execution_options(populate_existing=True)
    ).one()
    if escalation_of(plan.status, plan.escalated_at) != EscalationState.none:
        return
    request = session.get_one(CancellationRequest, plan.request_id)
    # The workflow's lock order is order, then plan; we already hold the plan, so we never *wait* for the
    # order: if a reply holds it, it is about to decide this plan anyway, and the next chase looks again.
    if (
        session.scalars(
            select(Order.id).where(Order.id == request.order_id).with_for_update(skip_locked=True)
        ).first()
        is None
    ):
        return
    waiting = _waiting(session, plan)
    if not waiting:
        return
    result.plans += 1
    if plan.deadline_at is not None and plan.deadline_at <= stamp:
        action = _strictest(waiting).deadline_action
        if action == "cancel_locally":
            _cancel_locally(session, plan, waiting, actor="reply deadline")
            result.cancelled_locally += 1
        elif action == "reject":
            _reject(
                session,
                plan,
                waiting,
                actor="reply deadline",
                code=RejectionCode.not_cancellable,
                message="no reply from the fulfillment service by the deadline",
            )
            result.rejected += 1
        else:
            if _escalate(session, plan, waiting, stamp=stamp):
                result.escalated += 1
        return
    for item in waiting:
        if _remind(session, plan, item, stamp):
            result.reminders += 1


def _unanswered(*plan_ids: int) -> Select[FulfillmentOrder, FulfillmentService]:
    """The plans' fulfillment orders whose cancellation request is not answered yet, with their services."""
    return (
        select(FulfillmentOrder, FulfillmentService)
        .join(FulfillmentService, FulfillmentService.id == FulfillmentOrder.fulfillment_service_id)
        .where(
            FulfillmentOrder.cancellation_plan_id.in_(plan_ids),
            FulfillmentOrder.request_status == FORequestStatus.cancellation_requested,
        )
        .order_by(FulfillmentOrder.id)
    )


def _waiting(session: Session, plan: CancellationPlan) -> list[Waiting]:
    rows = session.execute(
        _unanswered(plan.id).with_for_update(of=FulfillmentOrder).execution_options(populate_existing=True)
    ).all()
    return [Waiting(fo, service, fos.open_cancellation_request(session, fo.id)) for fo, service in rows]


def _strictest(waiting: list[Waiting]) -> FulfillmentService:
    return min((w.service for w in waiting), key=lambda s: (s.reply_deadline_seconds, s.id))


def _remind(session: Session, plan: CancellationPlan, item: Waiting, stamp: datetime) -> bool:
    mr, service = item.request, item.service
    if mr is None or mr.response is not None or service.reminder_count <= mr.reminders_sent:
        return False
    interval = timedelta(seconds=service.reminder_interval_seconds)
    slot = mr.reminders_sent
    for k in range(mr.reminders_sent + 1, service.reminder_count + 1):
        due = mr.sent_at + k * interval
        if due > stamp or (plan.deadline_at is not None and due >= plan.deadline_at):
            break
        slot = k
    if slot == mr.reminders_sent:
        return False
    skipped = slot - mr.reminders_sent - 1
    mr.reminders_sent = slot
    steps.create(
        session,
        request_id=plan.request_id,
        plan_id=plan.id,
        kind=StepKind.notify,
        fulfillment_order_id=item.fo.id,
        idempotency_key=f"{plan.id}:notify:{item.fo.id}:{slot + 1}",
    )
    transitions.record_event(
        session,
        "plan",
        plan.id,
        "plan.reminder_sent",
        data={
            "fulfillment_order_id": item.fo.id,
            "service": service.handle,
            "reminder": slot,
            "of": service.reminder_count,
            "skipped": skipped,
        },
    )
    session.flush()
    return True


# --- deadline actions (also staff's resolutions) ---------------------------------------------------------


def _escalate(session: Session, plan: CancellationPlan, waiting: list[Waiting], *, stamp: datetime) -> bool:
    moved = transitions.move_escalation(
        session,
        plan,
        EscalationState.escalated,
        data={
            "request_id": plan.request_id,
            "deadline_at": plan.deadline_at.isoformat() if plan.deadline_at else None,
            "fulfillment_order_ids": [w.fo.id for w in waiting],
            "services": sorted({w.service.handle for w in waiting}),
            "reminders_sent": max((w.request.reminders_sent for w in waiting if w.request), default=0),
        },
    )
    if not moved:
        return False
    _mark_escalated(waiting, True)
    # Subscribed storefronts hear of it in the same transaction (outbox), ids and counts only.
    webhook_outbox.emit(
        session,
        "plan.escalated",
        plan.request_id,
        {"fulfillment_order_ids": [w.fo.id for w in waiting], "escalated_at": stamp.isoformat()},
    )
    session.flush()
    return True


def _mark_escalated(waiting: list[Waiting], escalated: bool) -> None:
    for item in waiting:
        if item.request is not None:
            item.request.escalated = escalated


def _close_unanswered(waiting: list[Waiting], note: str) -> None:
    for item in waiting:
        if item.request is not None and item.request.response is None:
            item.request.response = NO_REPLY
            item.request.response_message = note


def _cancel_locally(session: Session, plan: CancellationPlan, waiting: list[Waiting], *, actor: str) -> None:
    note = f"cancelled locally ({actor}): no reply from the fulfillment service"
    transitions.record_event(
        session,
        "plan",
        plan.id,
        "plan.deadline_action",
        data={
            "action": "cancel_locally",
            "actor": actor,
            "fulfillment_order_ids": [w.fo.id for w in waiting],
        },
    )
    _close_unanswered(waiting, note)
    for item in waiting:
        fos.cancel_directly(session, item.fo, reason=note)
    settlement.confirm(session, plan, note=note)
    session.flush()


def _reject(
    session: Session,
    plan: CancellationPlan,
    waiting: list[Waiting],
    *,
    actor: str,
    code: RejectionCode,
    message: str,
) -> None:
    transitions.record_event(
        session,
        "plan",
        plan.id,
        "plan.deadline_action",
        data={"action": "reject", "actor": actor, "fulfillment_order_ids": [w.fo.id for w in waiting]},
    )
    request = session.get_one(CancellationRequest, plan.request_id)
    approval.reject_plan(session, request, plan, actor=actor, code=code, message=message, unanswered=NO_REPLY)
    session.flush()


# --- staff --------------------------------------------------------------------------------------------


_ESCALATED = select(CancellationPlan).where(
    CancellationPlan.status == PlanStatus.confirmation_waiting,
    CancellationPlan.escalated_at.is_not(None),
)


def count_escalations(session: Session) -> int:
    """How many plans `escalations` would list without a limit (the partial index on escalated plans)."""
    return session.scalar(select(func.count()).select_from(_ESCALATED.subquery())) or 0


def escalations(session: Session, *, limit: int = 500) -> list[Escalation]:
    """Plans escalated at their reply deadline and still waiting for a staff decision, oldest first."""
    return list(escalations_page(session, limit=limit).rows)


def escalations_page(
    session: Session, *, limit: int, after: keyset.Key | None = None, before: keyset.Key | None = None
) -> keyset.KeysetPage[Escalation]:
    """A page of `escalations`, oldest escalation first; its cursors are the plan's `(escalated_at, id)`."""
    plans = keyset.page(
        session,
        _ESCALATED_PAGE,
        (CancellationPlan.escalated_at, CancellationPlan.id),
        lambda plan: (plan.escalated_at, plan.id),
        descending=False,
        limit=limit,
        after=after,
        before=before,
    )
    return keyset.KeysetPage(_shown(session, plans.rows), plans.next_key, plans.previous_key)


# The columns of an escalated plan a list shows, as plain rows: a page of 500 loaded as ORM objects (the plans,
# their orders and requests, with their JSON columns) cost 40-80 ms of object construction for a few columns.
_PLAN_ROW: Final[Bundle[Any]] = Bundle(
    "plan",
    CancellationPlan.id,
    CancellationPlan.request_id,
    CancellationPlan.deadline_at,
    CancellationPlan.escalated_at,
)
_ESCALATED_PAGE: Final = select(_PLAN_ROW).where(
    CancellationPlan.status == PlanStatus.confirmation_waiting,
    CancellationPlan.escalated_at.is_not(None),
)
# Each fulfillment order's latest cancellation request (`fulfillment_orders.open_cancellation_request`).
_LATEST_REQUEST: Final = (
    select(MerchantRequest.id, MerchantRequest.sent_at, MerchantRequest.reminders_sent)
    .where(
        MerchantRequest.fulfillment_order_id == FulfillmentOrder.id,
        MerchantRequest.kind == MerchantRequestKind.cancellation_request,
    )
    .order_by(MerchantRequest.id.desc())
    .limit(1)
    .lateral("latest_request")
)
_UNANSWERED_ROWS: Final = (
    select(
        FulfillmentOrder.cancellation_plan_id.label("plan_id"),
        FulfillmentOrder.id.label("fo_id"),
        FulfillmentService.handle.label("service"),
        _LATEST_REQUEST.c.id.label("request_id"),
        _LATEST_REQUEST.c.sent_at,
        _LATEST_REQUEST.c.reminders_sent,
    )
    .join(FulfillmentService, FulfillmentService.id == FulfillmentOrder.fulfillment_service_id)
    .outerjoin(_LATEST_REQUEST, true())
    .where(
        FulfillmentOrder.cancellation_plan_id == any_(bindparam("plan_ids", type_=ARRAY(BigInteger()))),
        FulfillmentOrder.request_status == FORequestStatus.cancellation_requested,
    )
    .order_by(FulfillmentOrder.id)
)


def _shown(session: Session, plans: Sequence[Row[Any]]) -> list[Escalation]:
    # Two queries whatever the number of plans, columns only: the page of plans, then their unanswered orders
    # with each one's service and latest cancellation request (a LATERAL probe of the request index).
    unanswered: dict[int, list[Row[Any]]] = {plan.id: [] for plan in plans}
    if unanswered:
        for row in session.execute(_UNANSWERED_ROWS, {"plan_ids": list(unanswered)}):
            unanswered[row.plan_id].append(row)
    out: list[Escalation] = []
    for plan in plans:
        rows = unanswered[plan.id]
        requested = [row for row in rows if row.request_id is not None]
        out.append(
            Escalation(
                request_id=plan.request_id,
                plan_id=plan.id,
                merchant_request_ids=[row.request_id for row in requested],
                fulfillment_order_ids=[row.fo_id for row in rows],
                services=sorted({row.service for row in rows}),
                sent_at=min((row.sent_at for row in requested), default=None),
                deadline_at=plan.deadline_at,
                escalated_at=plan.escalated_at,
                reminders_sent=max((row.reminders_sent for row in requested), default=0),
            )
        )
    return out


def resolve(session: Session, request_id: int, *, action: str, actor: str) -> CancellationPlan:
    """Staff's decision on an escalated plan: cancel locally, reject, or wait one more policy deadline."""
    if action not in RESOLUTIONS:
        raise Invalid(f"action must be one of {', '.join(RESOLUTIONS)}", code="invalid_action")
    request = locking.get_request(session, request_id)
    locking.lock_order(session, request.order_id)
    plan = session.scalars(
        select(CancellationPlan)
        .where(CancellationPlan.request_id == request.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    # Every resolution leaves the escalated state: the escalation machine says whether there is one to leave.
    state = None if plan is None else escalation_of(plan.status, plan.escalated_at)
    if plan is None or state is None or not allows("escalation", state, EscalationState.none):
        shown = "no plan" if plan is None else f"plan {plan.id} is {plan.status.value}"
        raise InvalidTransition(f"request {request_id} is not escalated ({shown})", code="not_escalated")
    waiting = _waiting(session, plan)
    if not waiting:
        raise InvalidTransition(
            f"plan {plan.id} has no fulfillment order waiting for a reply", code="not_escalated"
        )
    stamp = now()
    if action == "wait":
        policy = timedelta(seconds=_strictest(waiting).reply_deadline_seconds)
        # Counted from now when the old deadline is long gone, so "wait" always buys a whole deadline.
        deadline = max(stamp, plan.deadline_at or stamp) + policy
        if transitions.move_escalation(
            session, plan, EscalationState.none, deadline_at=deadline, data={"actor": actor, "action": action}
        ):
            _mark_escalated(waiting, False)
    elif action == "cancel_locally":
        _cancel_locally(session, plan, waiting, actor=actor)
    else:
        _reject(
            session,
            plan,
            waiting,
            actor=actor,
            code=RejectionCode.staff_rejected,
            message=f"rejected by {actor}: no reply from the fulfillment service",
        )
    transitions.record_event(
        session,
        "plan",
        plan.id,
        "plan.escalation_resolved",
        data={
            "action": action,
            "actor": actor,
            "deadline_at": plan.deadline_at.isoformat() if plan.deadline_at else None,
        },
    )
    session.flush()
    return plan


def set_reply_policy(
    session: Session,
    handle: str,
    *,
    deadline_seconds: int | None = None,
    reminder_interval_seconds: int | None = None,
    reminder_count: int | None = None,
    deadline_action: str | None = None,
) -> FulfillmentService:
    """Change a service's reply policy (the importer's rules); plans already waiting keep their deadline."""
    service = session.scalars(
        select(FulfillmentService).where(FulfillmentService.handle == handle).with_for_update()
    ).one_or_none()
    if service is None:
        raise NotFound(f"no fulfillment service {handle!r}")
    before = {
        "deadline_seconds": service.reply_deadline_seconds,
        "reminder_interval_seconds": service.reminder_interval_seconds,
        "reminder_count": service.reminder_count,
        "deadline_action": service.deadline_action,
    }
    changes = {
        k: v
        for k, v in {
            "deadline_seconds": deadline_seconds,
            "reminder_interval_seconds": reminder_interval_seconds,
            "reminder_count": reminder_count,
            "deadline_action": deadline_action,
        }.items()
        if v is not None
    }
    try:
        policy = ReplyPolicyIn.model_validate({**before, **changes})
    except ValidationError as exc:
        errors: dict[str, list[str]] = {}
        for error in exc.errors(include_url=False, include_input=False):
            errors.setdefault(".".join(str(p) for p in error["loc"]), []).append(error["msg"])
        raise Invalid("invalid reply policy", field_errors=errors) from exc
    service.reply_deadline_seconds = policy.deadline_seconds
    service.reminder_interval_seconds = policy.reminder_interval_seconds
    service.reminder_count = policy.reminder_count
    service.deadline_action = policy.deadline_action
    transitions.record_event(
        session,
        "fulfillment_service",
        service.id,
        "fulfillment_service.reply_policy",
        data={"before": before, "after": policy.model_dump()},
    )
    session.flush()
    return service


__all__ = [
    "CHASE_LOCK_KEY",
    "DEADLINE_ACTIONS",
    "NO_REPLY",
    "RESOLUTIONS",
    "ChaseResult",
    "Escalation",
    "chase",
    "escalations",
    "resolve",
    "set_reply_policy",
]
