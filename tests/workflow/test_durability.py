"""DESIGN.md rules 1-7 under faults: lost messages, a worker killed mid-payment, racing workers."""

from __future__ import annotations

import secrets
import signal
import time
from typing import Any

import pytest
import redis

from cancelflow.models import MoneyTransaction, WorkflowStep
from tests.harness import Stack, wait_for
from tests.workflow.conftest import (
    count,
    make_order,
    make_service,
    money_rows,
    plan_for,
    request_row,
    wait_status,
)

pytestmark = pytest.mark.worker


def _broker() -> redis.Redis:
    from cancelflow.config import get_settings

    return redis.Redis.from_url(get_settings().require_broker_url())


def _queued() -> int:
    r = _broker()
    return sum(int(r.llen(q)) for q in ("default", "route", "money", "bulk", "intake"))


def _intake(**kwargs: Any) -> str:
    """Create a request in-process (as the submit task does); its validate message goes to the broker."""
    from cancelflow.db import transaction
    from cancelflow.services import intake
    from cancelflow.worker.app import install_sender

    install_sender()
    kwargs.setdefault("client_request_id", secrets.token_hex(8))
    kwargs.setdefault("reason", 1)
    with transaction() as session:
        intake.submit(session, kwargs)
    return str(kwargs["client_request_id"])


def test_requests_complete_after_every_message_is_lost(stack: Stack) -> None:
    # Given requests whose next messages are queued while no worker runs
    service = make_service(stack, policy="accept_after", delay_seconds=1)
    stack.procs["worker"].stop()
    cids = [_intake(order_item=make_order(service)["items"][0]["id"]) for _ in range(6)]
    assert _queued() >= 6
    # When the broker loses everything
    _broker().flushdb()
    assert _queued() == 0
    stack.start_worker()
    # Then the sweeper finds the due steps in PostgreSQL and every request completes
    for cid in cids:
        wait_status(cid, "completed", timeout=90)
    # And a second flush in the middle of the flow is survived too
    more = [_intake(order_item=make_order(service)["items"][0]["id"]) for _ in range(4)]
    # (some may already be completed: the service answers after 1 s; the others are mid-flow)
    wait_for(lambda: all(_moved_on(c) for c in more), timeout=60, what="requests approved")
    _broker().flushdb()
    for cid in more:
        wait_status(cid, "completed", timeout=90)
    for cid in cids + more:
        assert len(money_rows(plan_for(request_row(cid).id).id)) == 1


def _moved_on(cid: str) -> bool:
    row = request_row(cid)
    return row is not None and row.status.value in ("approved", "completed")


def test_worker_killed_mid_refund_moves_money_once(stack: Stack) -> None:
    # Given a gateway that takes its time, so the refund is in flight when the worker dies
    service = make_service(stack, policy="accept")
    stack.gateway("/_admin/config", json={"delay_seconds": 4})
    try:
        order = make_order(service, unit_price="77.70", quantity=1)
        cid = _intake(order_item=order["items"][0]["id"])
        request = wait_status(cid, "approved")
        plan = wait_for(lambda: _plan_waiting_for_payment(request.id), timeout=60, what="waiting_for_payment")
        key = f"{plan.id}:original_payment:1"
        wait_for(
            lambda: stack.gateway("/_admin/calls").get(key, 0) >= 1, timeout=30, what="refund call in flight"
        )
        # When every worker child is SIGKILLed in the middle of the call
        killed = 0
        for child in stack.procs["worker"].children():
            child.send_signal(signal.SIGKILL)
            killed += 1
        assert killed >= 1
        stack.gateway("/_admin/config", json={"delay_seconds": 0})
    finally:
        stack.gateway("/_admin/config", json={"delay_seconds": 0})
    # Then the worker replaces its child, the step runs again with the same key, and money moved once
    wait_status(cid, "completed", timeout=90)
    refunds = [r for r in stack.gateway("/refunds")["data"] if r["idempotency_key"] == key]
    assert len(refunds) == 1
    assert count(MoneyTransaction, MoneyTransaction.idempotency_key == key) == 1
    assert stack.gateway("/_admin/calls")[key] >= 2  # the retry really reached the gateway again
    assert stack.procs["worker"].alive()


def _plan_waiting_for_payment(request_id: int) -> Any:
    from cancelflow.db import transaction
    from cancelflow.models import CancellationPlan

    with transaction() as session:
        plan = session.query(CancellationPlan).filter_by(request_id=request_id).one_or_none()
    return plan is not None and plan.status.value in ("waiting_for_payment", "completed") and plan


def test_two_workers_racing_one_step_move_money_once(stack: Stack) -> None:
    from cancelflow.worker.app import celery_app

    second = stack.start_worker("worker2", concurrency=2)
    try:
        service = make_service(stack, policy="accept")
        stack.gateway("/_admin/config", json={"delay_seconds": 2})
        order = make_order(service, unit_price="12.00", quantity=1)
        cid = _intake(order_item=order["items"][0]["id"])
        request = wait_status(cid, "approved")
        plan = wait_for(lambda: _plan_waiting_for_payment(request.id), timeout=60, what="waiting_for_payment")
        from cancelflow.db import transaction

        with transaction() as session:
            step = session.query(WorkflowStep).filter_by(plan_id=plan.id, kind="refund").one()
        # When the same step is delivered many times at once to both workers
        for _ in range(6):
            celery_app.send_task("payments.refund", args=[step.id])
        time.sleep(0.5)
        stack.gateway("/_admin/config", json={"delay_seconds": 0})
        wait_status(cid, "completed", timeout=60)
    finally:
        stack.gateway("/_admin/config", json={"delay_seconds": 0})
        second.stop()
    key = f"{plan.id}:original_payment:1"
    assert len([r for r in stack.gateway("/refunds")["data"] if r["idempotency_key"] == key]) == 1
    assert count(MoneyTransaction, MoneyTransaction.plan_id == plan.id) == 1
    assert (
        count(
            WorkflowStep,
            WorkflowStep.plan_id == plan.id,
            WorkflowStep.kind == "refund",
            WorkflowStep.status == "done",
        )
        == 1
    )
