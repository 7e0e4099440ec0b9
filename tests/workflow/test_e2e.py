"""The whole flow through the real worker, beat, API and sandbox services."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from cancelflow.models import Event, FulfillmentOrder, LoyaltyLedgerEntry, WorkflowStep
from tests.factories import VALID_IBAN
from tests.harness import Stack, wait_for
from tests.workflow.conftest import (
    count,
    make_order,
    make_service,
    money_rows,
    plan_for,
    request_row,
    submit,
    wait_plan,
    wait_status,
)

pytestmark = pytest.mark.worker


def _fo(fo_id: int) -> FulfillmentOrder:
    from cancelflow.db import transaction

    with transaction() as session:
        return session.get_one(FulfillmentOrder, fo_id)


class TestHappyPaths:
    def test_card_refund_after_service_accepts(self, stack: Stack) -> None:
        # Given a card order whose fulfillment order the service has accepted
        service = make_service(stack, policy="accept")
        order = make_order(service, quantity=2, unit_price="49.90")
        item = order["items"][0]
        fo_id = order["fulfillment_orders"][0]["id"]

        # When the storefront asks to cancel both
        cid = submit(order_item=item["id"], quantity=2)

        # Then the service is asked, accepts, the card is refunded once and the plan closes
        request = wait_status(cid, "completed")
        plan = plan_for(request.id)
        assert plan.status.value == "completed"
        assert plan.refund_target.value == "original_payment"
        assert plan.amount == Decimal("99.80")
        fo = _fo(fo_id)
        assert (fo.request_status.value, fo.status.value) == ("cancellation_accepted", "cancelled")
        [money] = money_rows(plan.id)
        assert money.idempotency_key == f"{plan.id}:original_payment:1"
        refunds = [
            r for r in stack.gateway("/refunds")["data"] if r["idempotency_key"] == money.idempotency_key
        ]
        assert len(refunds) == 1
        assert Decimal(refunds[0]["amount"]) == Decimal("99.80")
        assert refunds[0]["payment_reference"] == f"pay_{order['id']}"
        notifications = stack_notifications(stack, service.handle)
        assert notifications >= 1

    def test_cash_on_delivery_refunds_by_bank_transfer(self, stack: Stack) -> None:
        service = make_service(stack, policy="accept")
        order = make_order(
            service, method="cash_on_delivery", quantity=1, unit_price="120.00", currency="eur"
        )
        cid = submit(order_item=order["items"][0]["id"], iban=VALID_IBAN, holder_name="Bob Norman")
        request = wait_status(cid, "completed")
        plan = plan_for(request.id)
        assert plan.refund_target.value == "bank_transfer"
        [money] = money_rows(plan.id)
        transfers = [
            t for t in stack.gateway("/transfers")["data"] if t["idempotency_key"] == money.idempotency_key
        ]
        assert len(transfers) == 1
        assert transfers[0]["iban"] == VALID_IBAN
        assert (Decimal(transfers[0]["amount"]), transfers[0]["currency"].lower()) == (
            Decimal("120.00"),
            "eur",
        )

    def test_loyalty_flag_credits_the_ledger(self, stack: Stack) -> None:
        service = make_service(stack, policy="accept")
        order = make_order(service, quantity=3, unit_price="10.10")
        cid = submit(order_item=order["items"][0]["id"], quantity=3, fully_refund_as_loyalty_money=True)
        request = wait_status(cid, "completed")
        plan = plan_for(request.id)
        assert plan.refund_target.value == "loyalty_money"
        assert (
            count(
                LoyaltyLedgerEntry,
                LoyaltyLedgerEntry.plan_id == plan.id,
                LoyaltyLedgerEntry.amount == Decimal("30.30"),
            )
            == 1
        )

    def test_fulfillment_order_not_accepted_is_cancelled_directly(self, stack: Stack) -> None:
        # Given work submitted to the service but not yet accepted: it is cancelled without asking
        service = make_service(stack, policy="reject")
        order = make_order(service, request_status="submitted", fo_status="open")
        cid = submit(order_item=order["items"][0]["id"])
        request = wait_status(cid, "completed")
        fo = _fo(order["fulfillment_orders"][0]["id"])
        assert fo.status.value == "cancelled"
        assert stack_notifications(stack, service.handle) == 0
        assert len(money_rows(plan_for(request.id).id)) == 1

    def test_partial_quantity_splits_the_fulfillment_order(self, stack: Stack) -> None:
        service = make_service(stack, policy="accept")
        order = make_order(service, quantity=3, unit_price="5.00")
        fo_id = order["fulfillment_orders"][0]["id"]
        cid = submit(order_item=order["items"][0]["id"], quantity=1)
        request = wait_status(cid, "completed")
        plan = plan_for(request.id)
        from cancelflow.db import transaction
        from cancelflow.services.fulfillment_orders import line_items

        with transaction() as session:
            part = session.query(FulfillmentOrder).filter_by(cancellation_plan_id=plan.id).one()
            original = session.get_one(FulfillmentOrder, fo_id)
            assert part.id != fo_id
            assert part.split_from_id == fo_id
            assert [li.quantity for li in line_items(session, part.id)] == [1]
            assert [li.quantity for li in line_items(session, fo_id)] == [2]
            assert (part.request_status.value, part.status.value) == ("cancellation_accepted", "cancelled")
            assert (original.request_status.value, original.status.value) == ("accepted", "in_progress")
        assert plan.amount == Decimal("5.00")


class TestServiceAnswers:
    def test_reject_records_message_and_moves_no_money(self, stack: Stack) -> None:
        service = make_service(stack, policy="reject", message="Already shipped")
        order = make_order(service, quantity=2)
        cid = submit(order_item=order["items"][0]["id"], quantity=2)
        request = wait_status(cid, "rejected")
        assert request.rejection_code == "fulfillment_rejected"
        assert request.rejection_message == "Already shipped"
        plan = plan_for(request.id)
        assert plan.status.value == "rejected"
        assert money_rows(plan.id) == []
        fo = _fo(order["fulfillment_orders"][0]["id"])
        assert (fo.request_status.value, fo.status.value) == ("cancellation_rejected", "in_progress")
        # the quantity is free again: a new request for it is accepted at intake
        cid2 = submit(order_item=order["items"][0]["id"], quantity=2)
        assert (
            wait_status(cid2, "waiting", "approved", "completed", "rejected").rejection_code
            != "quantity_exceeded"
        )

    def test_waiting_for_a_reply_holds_no_worker(self, stack: Stack) -> None:
        # Given a service that never answers, more waiting requests than worker processes
        silent = make_service(stack, policy="never")
        waiting = []
        for _ in range(stack.concurrency + 2):
            order = make_order(silent)
            waiting.append(submit(order_item=order["items"][0]["id"]))
        for cid in waiting:
            wait_plan(wait_status(cid, "approved").id, "confirmation_waiting")
        # When another request arrives for a service that answers, it still completes
        quick = make_service(stack, policy="accept")
        order = make_order(quick)
        wait_status(submit(order_item=order["items"][0]["id"]), "completed")
        # And an answer given later through the API resumes a waiting plan
        request = request_row(waiting[0])
        plan = plan_for(request.id)
        from cancelflow.db import transaction

        with transaction() as session:
            fo = session.query(FulfillmentOrder).filter_by(cancellation_plan_id=plan.id).one()
        response = httpx.post(
            f"{stack.api_url}/admin/api/2021-07/fulfillment_orders/{fo.id}/cancellation_request/accept.json",
            headers={"X-Shopify-Access-Token": silent.token},
            json={"cancellation_request": {"message": "ok"}},
        )
        assert response.status_code == 200, response.text
        wait_status(waiting[0], "completed")
        assert plan.deadline_at is not None

    def test_failing_callback_is_retried_until_it_answers(self, stack: Stack) -> None:
        flaky = make_service(stack, policy="fail_first", fail_first=2)
        order = make_order(flaky)
        request = wait_status(submit(order_item=order["items"][0]["id"]), "completed")
        notify_attempts = wait_for(
            lambda: count(
                WorkflowStep,
                WorkflowStep.request_id == request.id,
                WorkflowStep.kind == "notify",
                WorkflowStep.attempt == 2,
                WorkflowStep.status == "done",
            ),
            timeout=10,
            what="notify step done after two failed attempts",
        )
        assert notify_attempts == 1

    def test_duplicate_reply_is_applied_once(self, stack: Stack) -> None:
        service = make_service(stack, policy="accept")
        order = make_order(service)
        request = wait_status(submit(order_item=order["items"][0]["id"]), "completed")
        plan = plan_for(request.id)
        from cancelflow.db import transaction

        with transaction() as session:
            fo = session.query(FulfillmentOrder).filter_by(cancellation_plan_id=plan.id).one()
        url = f"{stack.api_url}/admin/api/2021-07/fulfillment_orders/{fo.id}/cancellation_request"
        headers = {"X-Shopify-Access-Token": service.token}
        again = httpx.post(f"{url}/accept.json", headers=headers)
        assert again.status_code == 200
        contrary = httpx.post(f"{url}/reject.json", headers=headers)
        assert contrary.status_code == 422
        assert "errors" in contrary.json()
        assert (
            count(
                Event,
                Event.entity == "fulfillment_order",
                Event.entity_id == fo.id,
                Event.kind == "fulfillment_order.cancellation_accepted",
            )
            == 1
        )
        assert len(money_rows(plan.id)) == 1


def stack_notifications(stack: Stack, handle: str) -> int:
    counts = httpx.get(f"{stack.fulfillment_url}/_admin/notifications", timeout=5).json()
    entry = counts.get(handle) or {}
    return int(entry.get("valid", 0)) + int(entry.get("failed_on_purpose", 0))
