"""A message the worker refuses before it becomes a request is recorded by client_request_id, and
`cancelflow submit` reports the refusal and its reason as soon as the worker decides (not a timeout)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cancelflow.db import transaction
from cancelflow.models import RejectedMessage
from tests.harness import Stack, wait_for
from tests.workflow.conftest import make_order, request_row, submit

pytestmark = pytest.mark.worker

UNKNOWN_ITEM = 2**40
# Long enough that a test which only passes by timing out would be caught by its exit code, not its clock.
WAIT = "90"


def rejection(client_request_id: str) -> RejectedMessage | None:
    with transaction() as session:
        return session.scalars(
            select(RejectedMessage).where(RejectedMessage.client_request_id == client_request_id)
        ).one_or_none()


def cli_submit(*args: str) -> Any:
    from cancelflow.cli.main import app

    return CliRunner().invoke(app, ["submit", *args, "--wait", WAIT])


def test_cli_reports_the_workers_refusal_with_its_reason(stack: Stack) -> None:
    cid = f"cli-{secrets.token_hex(6)}"
    result = cli_submit("--order-item", str(UNKNOWN_ITEM), "--reason", "1", "--client-request-id", cid)
    # Exit 1 with the reason, not exit 2 "not stored yet: is a worker running?"
    assert result.exit_code == 1, result.output
    assert "is a worker running" not in result.output
    assert "the worker refused the message (unknown_order_item): unknown order item" in result.output
    assert "order_item: non-existent object" in result.output
    assert request_row(cid) is None


def test_cli_reports_a_business_rule_rejection_as_the_stored_request(stack: Stack) -> None:
    order = make_order(None, quantity=1)
    item = str(order["items"][0]["id"])
    cid = f"cli-{secrets.token_hex(6)}"
    result = cli_submit("--order-item", item, "--reason", "1", "--quantity", "5", "--client-request-id", cid)
    assert result.exit_code == 0, result.output
    assert "rejected: quantity_exceeded" in result.output


@pytest.mark.parametrize(
    ("label", "message", "code", "field"),
    [
        ("unknown order item", {"order_item": UNKNOWN_ITEM}, "unknown_order_item", "order_item"),
        ("unknown reason", {"reason": 999_999}, "unknown_reason", "reason"),
        ("quantity is text", {"quantity": "two"}, "invalid_message", "quantity"),
        ("unknown field", {"colour": "red"}, "invalid_message", "colour"),
    ],
)
def test_each_refusal_is_recorded_once_per_client_request_id(
    stack: Stack, label: str, message: dict[str, Any], code: str, field: str
) -> None:
    order = make_order(None)
    cid = f"bad-{secrets.token_hex(6)}"
    kwargs: dict[str, Any] = {"order_item": order["items"][0]["id"], "reason": 1, **message}
    submit(client_request_id=cid, **kwargs)
    first = wait_for(lambda: rejection(cid), timeout=60, what=f"the refusal of {cid} recorded")
    assert (first.code, first.times) == (code, 1)
    assert field in first.errors
    # The same message again: one row, counted
    submit(client_request_id=cid, **kwargs)
    again = wait_for(
        lambda: (r := rejection(cid)) is not None and r.times == 2 and r,
        timeout=60,
        what="the repeat counted",
    )
    assert again.rejected_at >= first.rejected_at
    assert request_row(cid) is None


def test_positional_arguments_are_recorded_too(stack: Stack) -> None:
    from cancelflow.worker.app import celery_app

    cid = f"pos-{secrets.token_hex(6)}"
    celery_app.send_task("cancellations.submit", args=[1], kwargs={"client_request_id": cid})
    recorded = wait_for(lambda: rejection(cid), timeout=60, what="the refusal recorded")
    assert recorded.code == "invalid_message"
    assert recorded.errors == {"non_field_errors": ["Arguments must be passed by keyword."]}
