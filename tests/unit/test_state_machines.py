"""The state machines' registry and the compare-and-set mutator on a real database.

What each machine allows is checked against the real services by the stateful tests in
`tests/workflow/test_state_machines_stateful.py`, not against a copy of the tables."""

from __future__ import annotations

from enum import StrEnum

import pytest
from sqlalchemy.orm import Session

from cancelflow.errors import CancelflowError, InvalidTransition
from cancelflow.models import CancellationRequest, Event
from cancelflow.models.enums import FORequestStatus, FOStatus, PlanStatus, RequestStatus, StepStatus
from cancelflow.models.transitions import MACHINES as TABLES
from cancelflow.models.transitions import (
    PLAN_TRANSITIONS,
    REQUEST_TRANSITIONS,
    EscalationState,
    require,
)

MACHINES: dict[str, type[StrEnum]] = {
    "request": RequestStatus,
    "plan": PlanStatus,
    "step": StepStatus,
    "fulfillment_order.request_status": FORequestStatus,
    "fulfillment_order.status": FOStatus,
    "escalation": EscalationState,
}


def test_every_machine_is_judged_by_the_one_registry() -> None:
    assert set(TABLES) == set(MACHINES)


def test_a_refused_move_is_a_cancelflow_error_naming_the_move() -> None:
    with pytest.raises(CancelflowError) as caught:
        require("request", RequestStatus.completed, RequestStatus.approved)
    assert isinstance(caught.value, InvalidTransition)
    assert (caught.value.code, caught.value.machine, caught.value.current, caught.value.target) == (
        "invalid_transition",
        "request",
        "completed",
        "approved",
    )


@pytest.mark.parametrize("machine", list(MACHINES))
def test_every_state_is_listed(machine: str) -> None:
    assert set(TABLES[machine]) == set(MACHINES[machine])


def test_terminal_states_have_no_way_out() -> None:
    for state in (RequestStatus.completed, RequestStatus.rejected):
        assert REQUEST_TRANSITIONS[state] == frozenset()
    for plan_state in (PlanStatus.completed, PlanStatus.rejected):
        assert PLAN_TRANSITIONS[plan_state] == frozenset()
    assert PLAN_TRANSITIONS[PlanStatus.failed] >= {
        PlanStatus.waiting_for_payment,
        PlanStatus.confirmation_waiting,
    }


class TestCompareAndSet:
    def _request(self, session: Session) -> CancellationRequest:
        from tests.factories import new_order

        order = new_order(session=session)
        request = CancellationRequest(
            order_item_id=order.item_id,
            order_id=order.id,
            channel_id=1,
            reason_id=1,
            cancellation_type="cancel",
            status=RequestStatus.waiting,
            quantity=1,
            attributes={},
            version=1,
        )
        session.add(request)
        session.flush()
        return request

    def test_move_writes_status_version_and_event(self, session: Session) -> None:
        from cancelflow.services import transitions

        request = self._request(session)
        assert transitions.move(session, request, RequestStatus.approved, data={"actor": "test"})
        session.expire_all()
        fresh = session.get_one(CancellationRequest, request.id)
        assert (fresh.status, fresh.version) == (RequestStatus.approved, 2)
        [event] = session.query(Event).filter_by(entity="request", entity_id=request.id).all()
        assert (event.from_status, event.to_status, event.data) == ("waiting", "approved", {"actor": "test"})

    def test_stale_copy_loses_and_writes_nothing(self, session: Session) -> None:
        from cancelflow.services import transitions

        request = self._request(session)
        stale = CancellationRequest(id=request.id, status=RequestStatus.waiting, version=1)
        assert transitions.move(session, request, RequestStatus.approved)
        session.expunge(request)
        assert transitions.move(session, stale, RequestStatus.rejected) is False
        assert session.query(Event).filter_by(entity="request", entity_id=request.id).count() == 1

    def test_forbidden_move_raises_before_writing(self, session: Session) -> None:
        from cancelflow.services import transitions

        request = self._request(session)
        with pytest.raises(InvalidTransition):
            transitions.move(session, request, RequestStatus.completed)
        assert session.query(Event).filter_by(entity="request", entity_id=request.id).count() == 0
