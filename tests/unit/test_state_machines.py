"""Every (from, to) pair of every state machine, and the compare-and-set mutator on a real database."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import pytest
from sqlalchemy.orm import Session

from cancelflow.models import CancellationRequest, Event
from cancelflow.models.enums import FORequestStatus, FOStatus, PlanStatus, RequestStatus, StepStatus
from cancelflow.models.transitions import (
    FO_REQUEST_TRANSITIONS,
    FO_STATUS_TRANSITIONS,
    PLAN_TRANSITIONS,
    REQUEST_TRANSITIONS,
    STEP_TRANSITIONS,
    InvalidTransition,
    check,
)

MACHINES: dict[str, tuple[type[StrEnum], Mapping[Any, frozenset[Any]]]] = {
    "request": (RequestStatus, REQUEST_TRANSITIONS),
    "plan": (PlanStatus, PLAN_TRANSITIONS),
    "step": (StepStatus, STEP_TRANSITIONS),
    "fo_request": (FORequestStatus, FO_REQUEST_TRANSITIONS),
    "fo_status": (FOStatus, FO_STATUS_TRANSITIONS),
}

EXPECTED_ALLOWED = {
    "request": {
        ("waiting", "approved"),
        ("waiting", "rejected"),
        ("approved", "completed"),
        ("approved", "rejected"),
    },
    "step": {
        ("pending", "done"),
        ("pending", "dead"),
        ("pending", "cancelled"),
        ("dead", "pending"),
        ("dead", "cancelled"),
    },
}

PAIRS = [(name, a, b) for name, (enum, _) in MACHINES.items() for a in enum for b in enum]


@pytest.mark.parametrize(
    ("machine", "current", "target"), PAIRS, ids=[f"{m}:{a.value}->{b.value}" for m, a, b in PAIRS]
)
def test_every_pair(machine: str, current: StrEnum, target: StrEnum) -> None:
    _, table = MACHINES[machine]
    allowed = target in table[current]
    if machine in EXPECTED_ALLOWED:
        assert allowed == ((current.value, target.value) in EXPECTED_ALLOWED[machine])
    if allowed:
        check(machine, table, current, target)
    else:
        with pytest.raises(InvalidTransition):
            check(machine, table, current, target)


@pytest.mark.parametrize("machine", list(MACHINES))
def test_every_state_is_listed(machine: str) -> None:
    enum, table = MACHINES[machine]
    assert set(table) == set(enum)


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
