"""Reminders and reply deadlines driven by the real beat: a silent service is chased, then the deadline acts.

The service never answers (sandbox policy `never`), has 3 s to reply and is reminded every second, twice.
Beat runs `fulfillment.chase_replies`; this module's stack sweeps every 0.25 s so that each one-second
reminder slot is seen by several chases and a slow tick cannot push a reminder past the deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cancelflow.models import Event, FulfillmentOrder, WorkflowStep
from cancelflow.models.enums import StepKind
from tests.harness import Stack, clean_workdir, running, wait_for
from tests.workflow.conftest import (
    Service,
    make_order,
    make_service,
    money_rows,
    plan_for,
    submit,
    wait_plan,
    wait_status,
)

pytestmark = pytest.mark.worker

POLICY = {"deadline_seconds": 3, "reminder_interval_seconds": 1, "reminder_count": 2}


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, database: str) -> Iterator[Stack]:
    stack = Stack(clean_workdir("stack-test_escalation"), env_overrides={"CANCELFLOW_SWEEP_INTERVAL": "0.25"})
    with running(stack):
        # Beat takes a moment to start ticking; a request made before would see its first chase late.
        wait_for(
            lambda: stack.procs["worker"].log_text().count("fulfillment.chase_replies[") >= 6,
            timeout=60,
            what="beat chasing replies",
        )
        yield stack


def notifications(stack: Stack, handle: str) -> int:
    counts = httpx.get(f"{stack.fulfillment_url}/_admin/notifications", timeout=5).json()
    return int((counts.get(handle) or {}).get("valid", 0))


def notify_keys(plan_id: int) -> list[str]:
    from cancelflow.db import transaction

    with transaction() as session:
        return list(
            session.scalars(
                select(WorkflowStep.idempotency_key)
                .where(WorkflowStep.plan_id == plan_id, WorkflowStep.kind == StepKind.notify)
                .order_by(WorkflowStep.id)
            )
        )


def fo_state(fo_id: int) -> tuple[str, str]:
    from cancelflow.db import transaction

    with transaction() as session:
        fo = session.get_one(FulfillmentOrder, fo_id)
        return fo.request_status.value, fo.status.value


def plan_events(plan_id: int, kind: str) -> list[Event]:
    from cancelflow.db import transaction

    with transaction() as session:
        return list(
            session.scalars(
                select(Event).where(Event.entity == "plan", Event.entity_id == plan_id, Event.kind == kind)
            )
        )


def late_reply(stack: Stack, service: Service, fo_id: int, decision: str) -> httpx.Response:
    return httpx.post(
        f"{stack.api_url}/admin/api/2021-07/fulfillment_orders/{fo_id}/cancellation_request/{decision}.json",
        headers={"X-Shopify-Access-Token": service.token},
        json={"cancellation_request": {"message": "sorry, late"}},
        timeout=10,
    )


def silent_request(stack: Stack, action: str) -> tuple[Service, dict[str, Any], str, int]:
    service = make_service(stack, policy="never", deadline_action=action, **POLICY)
    order = make_order(service, quantity=2)
    cid = submit(order_item=order["items"][0]["id"], quantity=2)
    request = wait_status(cid, "approved", "completed", "rejected")
    return service, order, cid, request.id


def assert_chased_twice(stack: Stack, service: Service, plan_id: int, fo_id: int) -> None:
    # The first notification and two reminders, each its own step with the next key
    assert notify_keys(plan_id) == [f"{plan_id}:notify:{fo_id}:{n}" for n in (1, 2, 3)]
    wait_for(lambda: notifications(stack, service.handle) == 3, timeout=30, what="3 notifications")
    assert len(plan_events(plan_id, "plan.reminder_sent")) == 2


def test_escalate_flags_the_plan_then_staff_cancel_it(stack: Stack) -> None:
    from cancelflow.cli.main import app

    service, order, cid, request_id = silent_request(stack, "escalate")
    fo_id = order["fulfillment_orders"][0]["id"]
    # When the deadline passes, the plan is escalated and keeps waiting for a decision
    wait_for(
        lambda: plan_for(request_id).escalated_at is not None, timeout=60, what="plan escalated at deadline"
    )
    plan = plan_for(request_id)
    assert plan.status.value == "confirmation_waiting"
    assert fo_state(fo_id) == ("cancellation_requested", "in_progress")
    assert_chased_twice(stack, service, plan.id, fo_id)
    [escalated] = plan_events(plan.id, "plan.escalated")
    assert escalated.data["fulfillment_order_ids"] == [fo_id]
    # And staff see it in the list, with its age, and decide
    runner = CliRunner()
    listed = runner.invoke(app, ["escalations"])
    assert listed.exit_code == 0, listed.output
    assert any(
        line.split("│")[1].strip() == str(request_id) for line in listed.output.splitlines() if "│" in line
    )
    resolved = runner.invoke(app, ["escalations", "resolve", str(request_id), "--action", "cancel_locally"])
    assert resolved.exit_code == 0, resolved.output
    wait_status(cid, "completed")
    assert fo_state(fo_id) == ("closed", "cancelled")
    assert len(money_rows(plan.id)) == 1
    again = runner.invoke(app, ["escalations", "resolve", str(request_id), "--action", "reject"])
    assert again.exit_code == 1
    assert "not escalated" in again.output


def test_cancel_locally_at_the_deadline_then_a_late_reply_is_refused(stack: Stack) -> None:
    service, order, cid, _ = silent_request(stack, "cancel_locally")
    fo_id = order["fulfillment_orders"][0]["id"]
    request = wait_status(cid, "completed")
    plan = plan_for(request.id)
    assert plan.escalated_at is None
    assert fo_state(fo_id) == ("closed", "cancelled")
    [money] = money_rows(plan.id)
    refunds = [r for r in stack.gateway("/refunds")["data"] if r["idempotency_key"] == money.idempotency_key]
    assert len(refunds) == 1
    assert_chased_twice(stack, service, plan.id, fo_id)
    # A reply after the deadline action: refused, recorded and flagged, nothing changes
    response = late_reply(stack, service, fo_id, "accept")
    assert response.status_code == 422
    assert fo_state(fo_id) == ("closed", "cancelled")
    _assert_flagged(fo_id, "accept")


def test_reject_at_the_deadline_then_a_late_reply_is_refused(stack: Stack) -> None:
    service, order, cid, _ = silent_request(stack, "reject")
    fo_id = order["fulfillment_orders"][0]["id"]
    request = wait_status(cid, "rejected")
    assert request.rejection_code == "not_cancellable"
    plan = wait_plan(request.id, "rejected")
    assert fo_state(fo_id) == ("cancellation_rejected", "in_progress")
    assert money_rows(plan.id) == []
    assert_chased_twice(stack, service, plan.id, fo_id)
    # Even a late "reject", which says what the deadline did, is refused rather than taken as a duplicate
    response = late_reply(stack, service, fo_id, "reject")
    assert response.status_code == 422
    _assert_flagged(fo_id, "reject")


def _assert_flagged(fo_id: int, decision: str) -> None:
    from cancelflow.db import transaction

    with transaction() as session:
        [event] = session.scalars(
            select(Event).where(
                Event.entity == "fulfillment_order", Event.entity_id == fo_id, Event.kind == "reply.ignored"
            )
        ).all()
        assert event.data["decision"] == decision
        assert event.data["flagged"] is True
        assert event.data["after_deadline"] is True
