"""Forged step tasks through the real broker to a real worker: a task given another kind's step refuses it.

Two attacks reproduced end to end: `payments.refund` published with the id of a notify step (it used to
refund the customer a second time, keyed by the notify step), and `cancellations.close` published with the
id of a refund step still retrying (it used to complete the plan and the request with no money moved).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from cancelflow.models import WorkflowStep
from cancelflow.models.enums import StepKind
from tests.harness import Stack, clean_workdir, free_port, running, wait_for
from tests.workflow.conftest import (
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


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, database: str) -> Iterator[Stack]:
    """The usual stack; its worker serves its metrics, and a failed step retries only minutes later."""
    port = free_port()
    stack = Stack(
        clean_workdir("stack-test_forged_tasks"),
        env_overrides={
            "CANCELFLOW_WORKER_METRICS_PORT": str(port),
            # A failed step waits minutes for its next try: a step caught retrying stays pending.
            "CANCELFLOW_RETRY_BACKOFF_BASE": "600",
            "CANCELFLOW_RETRY_BACKOFF_MAX": "600",
        },
    )
    stack.worker_metrics_url = f"http://127.0.0.1:{port}/metrics"  # type: ignore[attr-defined]
    with running(stack):
        yield stack


def forged_counts(stack: Stack) -> dict[tuple[str, str], float]:
    """cancelflow_forged_tasks_total by (task, reason), as the worker exports it."""
    text = httpx.get(stack.worker_metrics_url, timeout=10).text  # type: ignore[attr-defined]
    return {
        (s.labels["task"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "cancelflow_forged_tasks_total"
    }


def _records(stack: Stack, event: str) -> list[dict[str, Any]]:
    found = []
    for line in stack.procs["worker"].log_text().splitlines():
        if event not in line:
            continue
        try:
            record = json.loads(line[line.index("{") :])
        except ValueError:
            continue  # a line Celery wrote around the JSON record
        if record.get("event") == event:
            found.append(record)
    return found


def refusals(stack: Stack, step_id: int) -> list[dict[str, Any]]:
    """The worker's 'forged task refused' records about `step_id`."""
    return [r for r in _records(stack, "forged task refused") if r.get("step_id") == step_id]


def step_of(plan_id: int, kind: StepKind) -> WorkflowStep:
    from cancelflow.db import transaction

    with transaction() as session:
        return session.scalars(
            select(WorkflowStep).where(WorkflowStep.plan_id == plan_id, WorkflowStep.kind == kind)
        ).one()


def state(step: WorkflowStep) -> tuple[Any, ...]:
    return (step.status, step.attempt, step.version, step.last_error, step.result)


def publish(task: str, step_id: int) -> None:
    from cancelflow.worker.app import celery_app

    celery_app.send_task(task, args=[step_id])


def test_forged_counter_is_exported_from_the_start(stack: Stack) -> None:
    counts = forged_counts(stack)
    for task in ("payments.refund", "cancellations.close", "webhooks.deliver", "exports.run", "tags.bulk"):
        for reason in ("bad_id", "unknown_id", "wrong_kind", "mismatch"):
            assert counts[(task, reason)] == 0, (task, reason)


def waiting_for_money(stack: Stack, unit_price: str) -> tuple[Any, WorkflowStep, WorkflowStep]:
    """A card plan waiting for its money with its notify and refund steps both pending, each retrying later.

    The service answers every notification with 500 (the notify step retries), yet accepts the cancellation
    (as a service may, having pulled its orders); the gateway fails the first refund (it retries). The
    stack's long backoff keeps both steps pending, so only a published message runs either of them.
    """
    from cancelflow.db import transaction
    from cancelflow.services import replies

    service = make_service(stack, policy="never", fail_first=10_000)
    order = make_order(service, quantity=1, unit_price=unit_price)
    request = wait_status(submit(order_item=order["items"][0]["id"]), "approved")
    plan = wait_plan(request.id, "confirmation_waiting")
    notify = wait_for(
        lambda: (s := step_of(plan.id, StepKind.notify)).attempt >= 1 and s,
        timeout=60,
        what="notify retrying",
    )
    stack.gateway("/_admin/config", json={"fail_rate": 1.0})
    try:
        with transaction() as session:
            assert notify.fulfillment_order_id is not None
            replies.answer_cancellation(
                session, notify.fulfillment_order_id, decision="accept", message=None, service_id=None
            )
        refund = wait_for(
            lambda: (s := step_of(plan.id, StepKind.refund)).attempt >= 1 and s,
            timeout=60,
            what="refund retrying",
        )
    finally:
        stack.gateway("/_admin/config", json={"fail_rate": 0})
    notify = step_of(plan.id, StepKind.notify)
    assert (notify.status.value, refund.status.value) == ("pending", "pending")
    assert plan_for(request.id).status.value == "waiting_for_payment"
    assert money_rows(plan.id) == []
    return request, notify, refund


def make_due(step_id: int) -> None:
    """The step's backoff has passed: the sweeper sends it."""
    from sqlalchemy import update

    from cancelflow.db import transaction
    from cancelflow.services.clock import now

    with transaction() as session:
        session.execute(update(WorkflowStep).where(WorkflowStep.id == step_id).values(next_attempt_at=now()))


def handled(stack: Stack, step_id: int) -> list[dict[str, Any]]:
    """The worker's 'step already handled' records about `step_id`."""
    return [r for r in _records(stack, "step already handled") if r.get("step_id") == step_id]


def refunds_at_gateway(stack: Stack, plan_id: int) -> list[str]:
    data = stack.gateway("/refunds")["data"]
    return [r["idempotency_key"] for r in data if r["idempotency_key"].startswith(f"{plan_id}:")]


def test_refund_published_with_a_notify_step_id_refunds_nothing(stack: Stack) -> None:
    # Given a card plan waiting for its refund, its notify step still pending
    request, notify, refund = waiting_for_money(stack, "41.30")
    plan = plan_for(request.id)

    # When an attacker publishes payments.refund with the id of the plan's notify step
    publish("payments.refund", notify.id)
    wait_for(
        lambda: refusals(stack, notify.id) or money_rows(plan.id), timeout=60, what="the forged task's end"
    )

    # Then no money moved and the notify step is untouched (no status move, no attempt counted)
    assert money_rows(plan.id) == []
    assert refunds_at_gateway(stack, plan.id) == []
    assert state(step_of(plan.id, StepKind.notify)) == state(notify)
    # And the worker refused it, said which step of which kind, and counted it
    [record] = refusals(stack, notify.id)
    assert (record["task"], record["step_kind"], record["reason"]) == (
        "payments.refund",
        "notify",
        "wrong_kind",
    )
    assert record["level"] == "warning"
    assert forged_counts(stack)[("payments.refund", "wrong_kind")] == 1

    # And the plan's own refund step, once due, refunds once under its own key and completes the plan
    make_due(refund.id)
    wait_status(request.client_request_id, "completed", timeout=60)
    key = f"{plan.id}:original_payment:1"
    assert [row.idempotency_key for row in money_rows(plan.id)] == [key]
    assert refunds_at_gateway(stack, plan.id) == [key]


def test_close_published_with_a_retrying_refund_step_id_completes_nothing(stack: Stack) -> None:
    # Given a card plan whose refund step is pending, retrying after a gateway failure
    request, _, refund = waiting_for_money(stack, "63.10")
    plan = plan_for(request.id)

    # When an attacker publishes cancellations.close with the refund step's id
    publish("cancellations.close", refund.id)
    wait_for(
        lambda: refusals(stack, refund.id) or plan_for(request.id).status.value != "waiting_for_payment",
        timeout=60,
        what="the forged task's end",
    )

    # Then the plan still waits for its money, the request is still approved, the refund step untouched
    assert plan_for(request.id).status.value == "waiting_for_payment"
    assert request_row(request.client_request_id).status.value == "approved"
    assert state(step_of(plan.id, StepKind.refund)) == state(refund)
    assert money_rows(plan.id) == []
    # And it was refused and counted
    [record] = refusals(stack, refund.id)
    assert (record["task"], record["step_kind"], record["reason"]) == (
        "cancellations.close",
        "refund",
        "wrong_kind",
    )
    assert forged_counts(stack)[("cancellations.close", "wrong_kind")] == 1

    # And the refund's own task, published before its backoff has passed, does not spend an attempt early
    seen = len(handled(stack, refund.id))
    publish("payments.refund", refund.id)
    wait_for(lambda: len(handled(stack, refund.id)) > seen, timeout=60, what="the early message's end")
    assert "not due" in handled(stack, refund.id)[-1]["reason"]
    assert state(step_of(plan.id, StepKind.refund)) == state(refund)

    # And the refund, once due, pays once and completes the plan
    make_due(refund.id)
    wait_status(request.client_request_id, "completed", timeout=60)
    assert [row.idempotency_key for row in money_rows(plan.id)] == [f"{plan.id}:original_payment:1"]
