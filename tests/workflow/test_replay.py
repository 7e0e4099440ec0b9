"""A money step that exhausts its retries goes dead, its plan fails; a replay finishes it, paying once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cancelflow.models import WorkflowStep
from cancelflow.models.enums import StepKind
from tests.harness import Stack, clean_workdir, running, wait_for
from tests.workflow.conftest import make_order, make_service, money_rows, submit, wait_plan, wait_status

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, database: str) -> Iterator[Stack]:
    """Two attempts per step, and a short HTTP timeout so a slow gateway looks like a lost answer."""
    stack = Stack(
        clean_workdir("stack-test_replay"),
        env_overrides={"CANCELFLOW_STEP_MAX_ATTEMPTS": "2", "CANCELFLOW_HTTP_TIMEOUT": "1.5"},
    )
    with running(stack):
        try:
            yield stack
        finally:
            stack.gateway("/_admin/config", json={"fail_first_n": 0, "delay_seconds": 0})


def refund_step(plan_id: int) -> Any:
    from cancelflow.db import transaction

    with transaction() as session:
        return session.scalars(
            select(WorkflowStep).where(WorkflowStep.plan_id == plan_id, WorkflowStep.kind == StepKind.refund)
        ).one()


def refunds_for(stack: Stack, key: str) -> list[dict[str, Any]]:
    return [r for r in stack.gateway("/refunds")["data"] if r["idempotency_key"] == key]


def dead_refund(stack: Stack) -> tuple[str, Any, Any]:
    service = make_service(stack, policy="accept")
    order = make_order(service, quantity=1, unit_price="30.00")
    cid = submit(order_item=order["items"][0]["id"], quantity=1)
    request = wait_status(cid, "approved", "completed")
    plan = wait_plan(request.id, "failed", "completed", timeout=90)
    assert plan.status.value == "failed"
    assert plan.failed_from == "waiting_for_payment"
    step = refund_step(plan.id)
    assert (step.status.value, step.attempt) == ("dead", 2)
    return cid, plan, step


def test_dead_refund_is_replayed_with_the_same_key_and_pays_once(stack: Stack) -> None:
    from cancelflow.cli.main import app

    # Given a gateway that answers 503 to every attempt: the refund step dies after 2 tries
    stack.gateway("/_admin/config", json={"fail_first_n": 100, "delay_seconds": 0})
    cid, plan, step = dead_refund(stack)
    assert "503" in (step.last_error or "")
    assert refunds_for(stack, step.idempotency_key) == []
    runner = CliRunner()
    listed = runner.invoke(app, ["dead"])
    assert listed.exit_code == 0, listed.output
    assert any(
        line.split("│")[1].strip() == str(step.id) for line in listed.output.splitlines() if "│" in line
    )
    # When the gateway is healthy again and the operator replays the plan
    stack.gateway("/_admin/config", json={"fail_first_n": 0})
    replayed = runner.invoke(app, ["replay", "--plan", str(plan.id)])
    assert replayed.exit_code == 0, replayed.output
    # Then the same step, with the same key, pays exactly once and the request completes
    wait_status(cid, "completed", timeout=60)
    [money] = money_rows(plan.id)
    assert money.idempotency_key == step.idempotency_key == f"{plan.id}:original_payment:1"
    assert money.step_id == step.id
    assert len(refunds_for(stack, step.idempotency_key)) == 1
    assert stack.gateway("/_admin/calls")[step.idempotency_key] == 3
    assert refund_step(plan.id).status.value == "done"


def test_a_refund_that_happened_but_looked_failed_is_not_paid_twice(stack: Stack) -> None:
    from cancelflow.cli.main import app

    # Given a gateway slower than our HTTP timeout: the first try times out *after* the gateway took it,
    # the second finds the key in flight (409); the step dies although the money moved
    stack.gateway("/_admin/config", json={"fail_first_n": 0, "delay_seconds": 3})
    cid, plan, step = dead_refund(stack)
    wait_for(lambda: len(refunds_for(stack, step.idempotency_key)) == 1, timeout=30, what="gateway refund")
    stack.gateway("/_admin/config", json={"delay_seconds": 0})
    # When the operator replays the step by its id
    replayed = CliRunner().invoke(app, ["replay", str(step.id)])
    assert replayed.exit_code == 0, replayed.output
    # Then the gateway answers from its record: still one refund, one money row, marked replayed
    wait_status(cid, "completed", timeout=60)
    assert len(refunds_for(stack, step.idempotency_key)) == 1
    [money] = money_rows(plan.id)
    assert money.idempotency_key == step.idempotency_key
    assert refund_step(plan.id).result["replayed"] is True


def test_replay_needs_exactly_one_target(stack: Stack) -> None:
    from cancelflow.cli.main import app

    result = CliRunner().invoke(app, ["replay"])
    assert result.exit_code == 2
    assert "exactly one" in result.output
