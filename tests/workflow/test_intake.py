"""Storefront messages through the real worker: idempotent, and bad ones never crash it or half-write."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from cancelflow.models import CancellationRequest
from tests.factories import VALID_IBAN
from tests.harness import Stack, wait_for
from tests.workflow.conftest import count, make_order, make_service, request_row, submit, wait_status

pytestmark = pytest.mark.worker


def test_same_client_request_id_creates_one_request(stack: Stack) -> None:
    service = make_service(stack, policy="accept")
    order = make_order(service, quantity=2)
    cid = secrets.token_hex(8)
    for _ in range(3):
        submit(client_request_id=cid, order_item=order["items"][0]["id"], quantity=1)
    wait_status(cid, "completed")
    assert count(CancellationRequest, CancellationRequest.client_request_id == cid) == 1
    # the other unit is still cancellable: only one request reserved quantity
    assert count(CancellationRequest, CancellationRequest.order_item_id == order["items"][0]["id"]) == 1


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("missing order_item", {"reason": 1}),
        ("quantity is text", {"quantity": "two"}),
        ("quantity zero", {"quantity": 0}),
        ("negative quantity", {"quantity": -3}),
        ("unknown order item", {"order_item": 1}),
        ("unknown reason", {"reason": 999999}),
        ("unknown field", {"colour": "red"}),
        ("loyalty flag is a string", {"fully_refund_as_loyalty_money": "yes"}),
    ],
)
def test_malformed_message_stores_nothing(stack: Stack, label: str, message: dict[str, Any]) -> None:
    order = make_order(None)
    cid = f"bad-{secrets.token_hex(6)}"
    kwargs: dict[str, Any] = {"order_item": order["items"][0]["id"], "reason": 1, **message}
    if label == "missing order_item":
        kwargs.pop("order_item")
    submit(client_request_id=cid, **kwargs)
    # The "received" line already names the id (argument repr); wait for the task's own verdict.
    wait_for(
        lambda: any(
            cid in line and "cancellation message rejected" in line
            for line in stack.procs["worker"].log_text().splitlines()
        ),
        timeout=30,
        what=f"worker rejected {cid}",
    )
    assert request_row(cid) is None
    assert stack.procs["worker"].alive()


@pytest.mark.parametrize(
    ("label", "order_kwargs", "message", "code"),
    [
        ("more than ordered", {"quantity": 2}, {"quantity": 3}, "quantity_exceeded"),
        (
            "bad IBAN checksum",
            {"method": "cash_on_delivery"},
            {"iban": "DE89370400440532013001", "holder_name": "Bob"},
            "invalid_iban",
        ),
        (
            "bank refund without IBAN",
            {"method": "bank_transfer"},
            {"holder_name": "Bob"},
            "missing_bank_account",
        ),
        (
            "bank refund without holder",
            {"method": "cash_on_delivery"},
            {"iban": VALID_IBAN},
            "missing_bank_account",
        ),
    ],
)
def test_business_rule_breach_is_stored_rejected(
    stack: Stack, label: str, order_kwargs: dict[str, Any], message: dict[str, Any], code: str
) -> None:
    order = make_order(None, **order_kwargs)
    cid = submit(order_item=order["items"][0]["id"], **message)
    request = wait_status(cid, "rejected")
    assert request.rejection_code == code
    assert request.rejection_message
    # a rejected request reserves nothing: the full quantity can still be cancelled
    good = submit(order_item=order["items"][0]["id"], iban=VALID_IBAN, holder_name="Bob Norman")
    wait_status(good, "completed")


def test_worker_survives_garbage_and_keeps_working(stack: Stack) -> None:
    from cancelflow.worker.app import celery_app

    celery_app.send_task("cancellations.submit", args=[1, 2, 3])
    celery_app.send_task("cancellations.submit", kwargs={"client_request_id": {"nested": "object"}})
    celery_app.send_task("cancellations.validate", args=[987654321])
    order = make_order(None)
    wait_status(submit(order_item=order["items"][0]["id"]), "completed")
    assert stack.procs["worker"].alive()


def test_cli_submit_publishes_the_storefront_message(stack: Stack) -> None:
    from typer.testing import CliRunner

    from cancelflow.cli.main import app

    service = make_service(stack, policy="accept")
    order = make_order(service, quantity=2)
    cid = f"cli-{secrets.token_hex(6)}"
    result = CliRunner().invoke(
        app,
        [
            "submit",
            "--order-item",
            str(order["items"][0]["id"]),
            "--reason",
            "1",
            "--quantity",
            "1",
            "--client-request-id",
            cid,
            "--wait",
            "30",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"client_request_id={cid}" in result.output
    request = wait_status(cid, "completed")
    assert request.quantity == 1
