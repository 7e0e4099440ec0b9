"""The state machines, as data, and the one judge of them: `require()` (and `services.transitions.move`, which
calls it). Services ask these tables whether a status change is allowed; nothing else decides."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

from cancelflow.errors import InvalidTransition
from cancelflow.models.enums import FORequestStatus, FOStatus, PlanStatus, RequestStatus, StepStatus
from cancelflow.models.machine import require_move

REQUEST_TRANSITIONS: Final[Mapping[RequestStatus, frozenset[RequestStatus]]] = {
    RequestStatus.waiting: frozenset({RequestStatus.approved, RequestStatus.rejected}),
    RequestStatus.approved: frozenset({RequestStatus.completed, RequestStatus.rejected}),
    RequestStatus.rejected: frozenset(),
    RequestStatus.completed: frozenset(),
}

_RESUMABLE = frozenset(
    {
        PlanStatus.waiting,
        PlanStatus.confirmation_waiting,
        PlanStatus.confirmed,
        PlanStatus.waiting_for_payment,
    }
)

PLAN_TRANSITIONS: Final[Mapping[PlanStatus, frozenset[PlanStatus]]] = {
    PlanStatus.waiting: frozenset(
        {PlanStatus.confirmation_waiting, PlanStatus.confirmed, PlanStatus.rejected, PlanStatus.failed}
    ),
    PlanStatus.confirmation_waiting: frozenset(
        {PlanStatus.confirmed, PlanStatus.rejected, PlanStatus.failed}
    ),
    PlanStatus.confirmed: frozenset({PlanStatus.waiting_for_payment, PlanStatus.failed}),
    PlanStatus.waiting_for_payment: frozenset({PlanStatus.completed, PlanStatus.failed}),
    # An operator's replay resumes a failed plan where it stopped.
    PlanStatus.failed: _RESUMABLE | frozenset({PlanStatus.rejected}),
    PlanStatus.completed: frozenset(),
    PlanStatus.rejected: frozenset(),
}

STEP_TRANSITIONS: Final[Mapping[StepStatus, frozenset[StepStatus]]] = {
    StepStatus.pending: frozenset({StepStatus.done, StepStatus.dead, StepStatus.cancelled}),
    StepStatus.dead: frozenset({StepStatus.pending, StepStatus.cancelled}),
    StepStatus.done: frozenset(),
    StepStatus.cancelled: frozenset(),
}

# The statuses a client may ask a request to move to (PUT/PATCH `status`); it completes with its plan.
CLIENT_REQUEST_TARGETS: Final = frozenset({RequestStatus.approved, RequestStatus.rejected})

# Shopify's fulfillment-order request status, restricted to the moves this service makes.
FO_REQUEST_TRANSITIONS: Final[Mapping[FORequestStatus, frozenset[FORequestStatus]]] = {
    FORequestStatus.unsubmitted: frozenset({FORequestStatus.submitted, FORequestStatus.closed}),
    FORequestStatus.submitted: frozenset(
        {FORequestStatus.accepted, FORequestStatus.rejected, FORequestStatus.closed}
    ),
    FORequestStatus.accepted: frozenset({FORequestStatus.cancellation_requested, FORequestStatus.closed}),
    FORequestStatus.rejected: frozenset({FORequestStatus.submitted, FORequestStatus.closed}),
    FORequestStatus.cancellation_requested: frozenset(
        {FORequestStatus.cancellation_accepted, FORequestStatus.cancellation_rejected, FORequestStatus.closed}
    ),
    FORequestStatus.cancellation_rejected: frozenset(
        {FORequestStatus.cancellation_requested, FORequestStatus.closed}
    ),
    FORequestStatus.cancellation_accepted: frozenset(),
    FORequestStatus.closed: frozenset(),
}

FO_STATUS_TRANSITIONS: Final[Mapping[FOStatus, frozenset[FOStatus]]] = {
    FOStatus.open: frozenset({FOStatus.in_progress, FOStatus.cancelled, FOStatus.closed, FOStatus.on_hold}),
    FOStatus.scheduled: frozenset({FOStatus.open, FOStatus.cancelled}),
    FOStatus.on_hold: frozenset({FOStatus.open, FOStatus.cancelled}),
    FOStatus.in_progress: frozenset({FOStatus.cancelled, FOStatus.closed, FOStatus.incomplete}),
    FOStatus.incomplete: frozenset({FOStatus.cancelled, FOStatus.closed}),
    FOStatus.cancelled: frozenset(),
    FOStatus.closed: frozenset(),
}


# A plan waiting for its services' answers may be escalated to staff at the reply deadline; staff lift it again
# ("wait") or decide (the plan then moves on through PLAN_TRANSITIONS). Stored as `escalated_at` (NULL = none).
class EscalationState(StrEnum):
    none = "none"
    escalated = "escalated"


ESCALATION_TRANSITIONS: Final[Mapping[EscalationState, frozenset[EscalationState]]] = {
    EscalationState.none: frozenset({EscalationState.escalated}),
    EscalationState.escalated: frozenset({EscalationState.none}),
}
# The only plan status the escalation machine runs in.
ESCALATING: Final = PlanStatus.confirmation_waiting

MACHINES: Final[Mapping[str, Mapping[Any, frozenset[Any]]]] = {
    "request": REQUEST_TRANSITIONS,
    "plan": PLAN_TRANSITIONS,
    "step": STEP_TRANSITIONS,
    "fulfillment_order.request_status": FO_REQUEST_TRANSITIONS,
    "fulfillment_order.status": FO_STATUS_TRANSITIONS,
    "escalation": ESCALATION_TRANSITIONS,
}


def allows(machine: str, current: StrEnum, target: StrEnum) -> bool:
    return target in MACHINES[machine][current]


def require(
    machine: str, current: StrEnum, target: StrEnum, *, message: str | None = None, code: str | None = None
) -> None:
    """Raise `InvalidTransition` (with `message`, or one naming the move) unless the machine allows it."""
    require_move(machine, MACHINES[machine], current, target, message=message, code=code)


def is_terminal(machine: str, state: StrEnum) -> bool:
    return not MACHINES[machine][state]


def escalation_of(status: PlanStatus, escalated_at: object | None) -> EscalationState | None:
    """Where a plan stands in the escalation machine; None when the plan is not in the status it runs in."""
    if status != ESCALATING:
        return None
    return EscalationState.none if escalated_at is None else EscalationState.escalated


# --- Shopify's fulfillment-order actions, read off the tables ------------------------------------------------

# A cancellation request only targets work in progress (Shopify's CANCELLATION_REQUEST).
CONSENT_STATUS: Final = FOStatus.in_progress
# The request statuses the service must be asked from: it has taken the work on, and only it can stop it.
ASKABLE_REQUEST_STATUSES: Final = frozenset(
    state for state, to in FO_REQUEST_TRANSITIONS.items() if FORequestStatus.cancellation_requested in to
)


def needs_service_consent(request_status: FORequestStatus, status: FOStatus, *, assigned: bool) -> bool:
    """The work is the service's: a cancellation must be requested, not made directly."""
    return assigned and status == CONSENT_STATUS and request_status in ASKABLE_REQUEST_STATUSES


def fulfillment_order_actions(
    request_status: FORequestStatus, status: FOStatus, *, assigned: bool
) -> list[str]:
    """Shopify's `supported_actions`: each action is offered when the move it makes is in the tables."""
    statuses, requests = FO_STATUS_TRANSITIONS[status], FO_REQUEST_TRANSITIONS[request_status]
    consent = needs_service_consent(request_status, status, assigned=assigned)
    actions: list[str] = []
    if assigned and FORequestStatus.submitted in requests and FOStatus.in_progress in statuses:
        actions.append("request_fulfillment")
    if consent:
        actions.append("request_cancellation")
    if status == FOStatus.on_hold and FOStatus.open in statuses:
        actions.append("release_hold")
    if status == FOStatus.scheduled and FOStatus.open in statuses:
        actions.append("mark_as_open")
    if FOStatus.cancelled in statuses and not consent:
        actions.append("cancel_fulfillment_order")
    # Work is fulfilled by whoever holds it: the service once in progress, the merchant when nobody is assigned.
    if FOStatus.closed in statuses and (
        status == FOStatus.in_progress or (not assigned and FOStatus.in_progress in statuses)
    ):
        actions.append("create_fulfillment")
    return actions


__all__ = [
    "CLIENT_REQUEST_TARGETS",
    "ESCALATION_TRANSITIONS",
    "FO_REQUEST_TRANSITIONS",
    "FO_STATUS_TRANSITIONS",
    "MACHINES",
    "PLAN_TRANSITIONS",
    "REQUEST_TRANSITIONS",
    "STEP_TRANSITIONS",
    "EscalationState",
    "InvalidTransition",
    "allows",
    "escalation_of",
    "fulfillment_order_actions",
    "is_terminal",
    "needs_service_consent",
    "require",
]
