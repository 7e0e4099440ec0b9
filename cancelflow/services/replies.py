"""A fulfillment service's reply to a cancellation request: applied once, every other reply recorded.

An accept that leaves nothing waiting confirms the plan (`settlement.confirm`); a reject rejects it
(`approval.reject_plan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from cancelflow.models import (
    CancellationPlan,
    CancellationRequest,
    FulfillmentOrder,
    MerchantRequest,
)
from cancelflow.models.base import table_of
from cancelflow.models.enums import (
    FORequestStatus,
    FOStatus,
    PlanStatus,
    RejectionCode,
)
from cancelflow.models.transitions import EscalationState, allows, escalation_of
from cancelflow.services import fulfillment_orders as fos
from cancelflow.services import transitions
from cancelflow.services.approval import reject_plan
from cancelflow.services.clock import now
from cancelflow.services.locking import lock_order_of_fo
from cancelflow.services.settlement import confirm


@dataclass(frozen=True, slots=True)
class ReplyOutcome:
    fulfillment_order: FulfillmentOrder
    applied: bool
    error: str | None = None


def _replier(service_id: int | None) -> str:
    """Who answered, as an event's actor (a staff user's is `staff (user:<id>)`)."""
    return "fulfillment service" if service_id is None else f"fulfillment service (service:{service_id})"


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
    lock_order_of_fo(session, fo_id)
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
    _answer_open_request(session, fo.id, "accepted" if accepted else "rejected", message)
    transitions.move_fulfillment_order(
        session,
        fo,
        request_status=done_state,
        status=FOStatus.cancelled if accepted else FOStatus.in_progress,
        data={"message": message, "actor": _replier(service_id)},
    )
    if fo.cancellation_plan_id is not None:
        # The plan, fresh under the order lock, with how many of its orders still wait for an answer (this
        # one's move above included): one round trip.
        plan, still_waiting = session.execute(
            _PLAN_AND_STILL_WAITING, {"plan_id": fo.cancellation_plan_id}
        ).one()
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
            if still_waiting == 0:
                confirm(session, plan, note="accepted by the fulfillment service")
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


_MERCHANT_REQUESTS = table_of(MerchantRequest)
_ANSWER_OPEN_REQUEST = (
    update(_MERCHANT_REQUESTS)
    .where(_MERCHANT_REQUESTS.c.id == fos.OPEN_CANCELLATION_REQUEST_ID)
    .values(
        response=bindparam("response"),
        response_message=bindparam("response_message"),
        responded_at=bindparam("responded_at"),
    )
    .returning(_MERCHANT_REQUESTS.c.id)
)


def _answer_open_request(session: Session, fo_id: int, response: str, message: str | None) -> None:
    """The latest cancellation request of the fulfillment order records the answer: one statement (Core, no
    SELECT first); a copy of that request the session already holds gets the answer too."""
    answer = {"response": response, "response_message": message, "responded_at": now()}
    answered = session.connection().execute(_ANSWER_OPEN_REQUEST, {"fo_id": fo_id, **answer}).scalar()
    held = None if answered is None else session.identity_map.get(identity_key(MerchantRequest, answered))
    if held is not None:
        for name, value in answer.items():
            set_committed_value(held, name, value)


_PLAN_AND_STILL_WAITING = (
    select(
        CancellationPlan,
        select(func.count())
        .select_from(FulfillmentOrder)
        .where(
            FulfillmentOrder.cancellation_plan_id == CancellationPlan.id,
            FulfillmentOrder.request_status == FORequestStatus.cancellation_requested,
        )
        .scalar_subquery(),
    )
    .where(CancellationPlan.id == bindparam("plan_id"))
    .execution_options(populate_existing=True)
)
