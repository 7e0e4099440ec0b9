"""Money is keyed by the plan's own money step, whatever step row a task is handed.

Even a step row of a money kind moves no money unless it is the plan's money step: its kind is the one the
plan's refund target calls for and its key is `{plan_id}:{target}:{n}`. A close step completes nothing while
a money step of its plan is unpaid. Tasks are called as the worker calls them, in this process.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select

from cancelflow.db import transaction
from cancelflow.models import CancellationPlan, LoyaltyLedgerEntry, MoneyTransaction, WorkflowStep
from cancelflow.models.enums import PlanStatus, StepKind, StepStatus
from cancelflow.services import after_commit
from tests.security.world import World, snapshot


def _pending_step(world: World, kind: StepKind) -> WorkflowStep:
    with transaction() as session:
        return session.scalars(
            select(WorkflowStep)
            .where(
                WorkflowStep.request_id.in_(world.request_ids),
                WorkflowStep.kind == kind,
                WorkflowStep.status == StepStatus.pending,
            )
            .order_by(WorkflowStep.id)
            .limit(1)
        ).one()


def _add_step(step: WorkflowStep, *, kind: StepKind, key: str) -> int:
    """A pending step row on `step`'s plan, as a bug or a hand-made row could leave one."""
    stamp = datetime.now(UTC)
    with transaction() as session:
        return int(
            session.scalar(
                insert(WorkflowStep)
                .values(
                    request_id=step.request_id,
                    plan_id=step.plan_id,
                    kind=kind,
                    status=StepStatus.pending,
                    attempt=0,
                    max_attempts=8,
                    next_attempt_at=stamp,
                    idempotency_key=key,
                    result={},
                    version=1,
                    created_date=stamp,
                    modified_date=stamp,
                )
                .returning(WorkflowStep.id)
            )
        )


def _run(task: str, step_id: int) -> str:
    from cancelflow.worker.app import celery_app

    celery_app.loader.import_default_modules()
    return str(celery_app.tasks[task](step_id))


def _money_of(plan_id: int | None) -> tuple[int, int]:
    with transaction() as session:
        rows = session.scalars(select(MoneyTransaction.id).where(MoneyTransaction.plan_id == plan_id)).all()
        ledger = session.scalars(
            select(LoyaltyLedgerEntry.id).where(LoyaltyLedgerEntry.plan_id == plan_id)
        ).all()
    return len(rows), len(ledger)


@pytest.mark.parametrize(
    ("kind", "task", "key"),
    [
        # A loyalty step under another step's key: it would credit the customer a second time.
        (StepKind.loyalty_credit, "loyalty.credit", "{plan}:notify:1:1"),
        # The right key pattern for another target.
        (StepKind.loyalty_credit, "loyalty.credit", "{plan}:original_payment:1"),
        # A money kind the plan's target does not call for.
        (StepKind.refund, "payments.refund", "{plan}:loyalty_money:2"),
        (StepKind.bank_transfer, "payments.bank_transfer", "{plan}:bank_transfer:7"),
    ],
)
def test_a_step_that_is_not_the_plans_money_step_moves_no_money(
    world: World, sent: list[after_commit.Send], kind: StepKind, task: str, key: str
) -> None:
    # Given a loyalty plan waiting for its money, and a second money-kind step row on it
    money_step = _pending_step(world, StepKind.loyalty_credit)
    with transaction() as session:
        assert session.get_one(CancellationPlan, money_step.plan_id).status == PlanStatus.waiting_for_payment
    rogue = _add_step(money_step, kind=kind, key=key.format(plan=money_step.plan_id))
    before, money = snapshot(world), _money_of(money_step.plan_id)

    # When its task runs it
    outcome = _run(task, rogue)

    # Then it is refused and nothing changed: no money row, no ledger entry, no status moved
    assert outcome == "refused"
    assert _money_of(money_step.plan_id) == money == (0, 0)
    assert snapshot(world) == before
    assert sent == []
    with transaction() as session:
        assert session.get_one(WorkflowStep, rogue).status == StepStatus.pending


def test_close_refuses_a_plan_with_unpaid_money(world: World, sent: list[after_commit.Send]) -> None:
    # Given a plan whose refund step is still pending, and a close step made for it out of turn
    refund = _pending_step(world, StepKind.refund)
    close = _add_step(refund, kind=StepKind.close, key=f"{refund.plan_id}:close:rogue")
    before = snapshot(world)

    # When cancellations.close runs that close step
    outcome = _run("cancellations.close", close)

    # Then the plan still waits for its money and nothing changed
    assert outcome == "refused"
    assert snapshot(world) == before
    assert sent == []
    with transaction() as session:
        assert session.get_one(CancellationPlan, refund.plan_id).status == PlanStatus.waiting_for_payment
