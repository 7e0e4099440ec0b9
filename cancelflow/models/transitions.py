"""The state machines, as data. One mutator (services.transitions) reads these; nothing else decides."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

from cancelflow.models.enums import FORequestStatus, FOStatus, PlanStatus, RequestStatus, StepStatus

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


class InvalidTransition(Exception):
    """A move the state machine does not allow."""

    def __init__(self, machine: str, current: StrEnum, target: StrEnum) -> None:
        super().__init__(f"{machine}: {current.value} -> {target.value} is not allowed")
        self.machine = machine
        self.current = current
        self.target = target


def check(
    machine: str, table: Mapping[StrEnum, frozenset[StrEnum]], current: StrEnum, target: StrEnum
) -> None:
    if target not in table[current]:
        raise InvalidTransition(machine, current, target)
