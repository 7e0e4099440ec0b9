"""Intake and approval services against the real database (in-process; no broker involved)."""

from __future__ import annotations

import secrets
import threading
from typing import Any

import pytest
from sqlalchemy.orm import Session

from cancelflow.errors import Invalid, InvalidTransition
from cancelflow.models import CancellationPlan, CancellationRequest, OrderItem, WorkflowStep
from cancelflow.services import approval, cancellation_requests, intake
from cancelflow.services.after_commit import pending_sends
from tests.factories import VALID_IBAN, PlacedOrder, new_order


def _msg(order: PlacedOrder, **kwargs: Any) -> dict[str, Any]:
    return {
        "client_request_id": secrets.token_hex(8),
        "order_item": order.item_id,
        "reason": 1,
        **kwargs,
    }


class TestSubmit:
    def test_valid_message_creates_waiting_request_and_asks_for_validation(self, session: Session) -> None:
        order = new_order(session=session, quantity=3)
        result = intake.submit(session, _msg(order, quantity=2))
        assert result.created
        assert result.request.status.value == "waiting"
        assert session.get_one(OrderItem, order.item_id).requested_quantity == 2
        [step] = session.query(WorkflowStep).filter_by(request_id=result.request.id).all()
        assert step.kind.value == "validate"
        assert [s.task for s in pending_sends(session)] == ["cancellations.validate"]

    def test_second_message_with_same_id_returns_the_first(self, session: Session) -> None:
        order = new_order(session=session)
        message = _msg(order, quantity=1)
        first = intake.submit(session, message)
        second = intake.submit(session, message)
        assert not second.created
        assert second.request.id == first.request.id
        assert session.get_one(OrderItem, order.item_id).requested_quantity == 1

    @pytest.mark.parametrize(
        "bad",
        [
            {"quantity": 0},
            {"quantity": "1"},
            {"order_item": "x"},
            {"reason": None},
            {"extra": 1},
            {"cancellation_type": "explode"},
            {"client_request_id": ""},
        ],
    )
    def test_malformed_raises_invalid_and_stores_nothing(self, session: Session, bad: dict[str, Any]) -> None:
        order = new_order(session=session)
        before = session.query(CancellationRequest).count()
        with pytest.raises(Invalid) as info:
            intake.submit(session, _msg(order, **bad))
        assert info.value.field_errors
        assert session.query(CancellationRequest).count() == before

    def test_bad_iban_is_stored_rejected_without_the_iban(self, session: Session) -> None:
        order = new_order(session=session, method="cash_on_delivery")
        result = intake.submit(session, _msg(order, iban="DE89370400440532013001", holder_name="Bob"))
        assert result.request.status.value == "rejected"
        assert result.request.rejection_code == "invalid_iban"
        assert result.request.iban is None
        assert session.get_one(OrderItem, order.item_id).requested_quantity == 0
        assert pending_sends(session) == []

    def test_iban_is_normalised(self, session: Session) -> None:
        order = new_order(session=session, method="bank_transfer")
        spaced = " ".join(VALID_IBAN[i : i + 4] for i in range(0, len(VALID_IBAN), 4)).lower()
        result = intake.submit(session, _msg(order, iban=spaced, holder_name="Bob"))
        assert result.request.iban == VALID_IBAN


class TestOneSetOfRules:
    """The API and the message apply the same rules: the API refuses with a 400 and stores nothing, the
    message stores the request rejected with the rule's code."""

    @pytest.mark.parametrize(
        ("method", "fields", "code", "http_field"),
        [
            ("card", {"quantity": 3}, "quantity_exceeded", "quantity"),
            (
                "cash_on_delivery",
                {"iban": "DE89370400440532013001", "holder_name": "Bob"},
                "invalid_iban",
                "iban",
            ),
            ("cash_on_delivery", {}, "missing_bank_account", "holder_name"),
        ],
    )
    def test_a_broken_rule_is_a_400_for_the_api_and_a_rejected_request_for_a_message(
        self, session: Session, method: str, fields: dict[str, Any], code: str, http_field: str
    ) -> None:
        order = new_order(session=session, quantity=2, method=method)
        message = _msg(order, **fields)
        item_id = order.item_id
        with pytest.raises(Invalid) as refused:
            cancellation_requests.create(
                session,
                {k: v for k, v in message.items() if k != "client_request_id"},
                client_request_id=message["client_request_id"],
                channel_id=None,
            )
        assert http_field in refused.value.field_errors
        assert session.query(CancellationRequest).filter_by(order_item_id=item_id).count() == 0
        stored = intake.submit(session, message).request
        assert (stored.status.value, stored.rejection_code) == ("rejected", code)

    def test_what_is_cancelled_is_checked_before_where_the_money_goes(self, session: Session) -> None:
        order = new_order(session=session, quantity=1, method="cash_on_delivery")
        result = intake.submit(session, _msg(order, quantity=2, iban="DE89370400440532013001"))
        assert result.request.rejection_code == "quantity_exceeded"


class TestApproval:
    def test_approve_makes_plan_with_amount_and_target(self, session: Session) -> None:
        order = new_order(session=session, quantity=3, unit_price="19.99")
        request = intake.submit(session, _msg(order, quantity=3)).request
        plan = approval.approve(session, request, actor="staff:alice")
        assert request.status.value == "approved"
        assert (str(plan.amount), plan.currency, plan.refund_target.value) == (
            "59.97",
            "try",
            "original_payment",
        )
        assert session.query(WorkflowStep).filter_by(plan_id=plan.id, kind="route").count() == 1

    def test_approving_twice_is_an_invalid_transition(self, session: Session) -> None:
        order = new_order(session=session)
        request = intake.submit(session, _msg(order)).request
        approval.approve(session, request, actor="a")
        with pytest.raises(InvalidTransition):
            approval.approve(session, request, actor="b")
        assert session.query(CancellationPlan).filter_by(request_id=request.id).count() == 1

    def test_manual_rule_leaves_request_waiting(
        self, session: Session, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from cancelflow.config import get_settings
        from cancelflow.services import steps

        monkeypatch.setenv("CANCELFLOW_APPROVAL_RULE", "manual")
        get_settings.cache_clear()
        try:
            order = new_order(session=session)
            request = intake.submit(session, _msg(order)).request
            step_id = session.query(WorkflowStep).filter_by(request_id=request.id).one().id
            step = steps.claim(session, step_id, task="cancellations.validate")
            approval.validate_step(session, step)
            assert request.status.value == "waiting"
            assert session.query(CancellationPlan).filter_by(request_id=request.id).count() == 0
        finally:
            get_settings.cache_clear()


def test_concurrent_requests_never_exceed_ordered_quantity(database: str) -> None:
    """Rule 7: twelve racing submissions for one unit each, on an item of five: five win."""
    from cancelflow.db import transaction

    item_id = new_order(quantity=5).item_id
    barrier = threading.Barrier(12)
    outcomes: list[str] = []

    def one() -> None:
        barrier.wait()
        with transaction() as session:
            result = intake.submit(
                session,
                {
                    "client_request_id": secrets.token_hex(8),
                    "order_item": item_id,
                    "reason": 1,
                    "quantity": 1,
                },
            )
            outcomes.append(result.request.status.value)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["rejected"] * 7 + ["waiting"] * 5
    with transaction() as session:
        assert session.get_one(OrderItem, item_id).requested_quantity == 5
        assert {
            r.rejection_code
            for r in session.query(CancellationRequest).filter_by(order_item_id=item_id, status="rejected")
        } == {"quantity_exceeded"}
