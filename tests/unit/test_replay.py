"""Dead steps and their replay, in-process."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from cancelflow.errors import Conflict, NotFound
from cancelflow.models import CancellationPlan, Event, WorkflowStep
from cancelflow.models.enums import PlanStatus, StepKind, StepStatus
from cancelflow.services import after_commit, replay, routing, steps, transitions
from tests.factories import approved_plan, step_of


def dead_route_step(session: Session) -> tuple[CancellationPlan, WorkflowStep]:
    """A plan whose route step exhausted its retries: the step is dead, the plan failed from `waiting`."""
    plan = approved_plan(session)
    step = step_of(session, plan, StepKind.route)
    for _ in range(step.max_attempts):
        steps.record_failure(session, step.id, "TransientError: 503", permanent=False)
    session.refresh(step)
    session.refresh(plan)
    assert (step.status, plan.status, plan.failed_from) == (StepStatus.dead, PlanStatus.failed, "waiting")
    return plan, step


def kinds(session: Session, entity: str, entity_id: int) -> list[str]:
    return list(
        session.scalars(
            select(Event.kind).where(Event.entity == entity, Event.entity_id == entity_id).order_by(Event.id)
        )
    )


class TestListing:
    def test_dead_steps_are_listed_with_their_error(self, session: Session) -> None:
        plan, step = dead_route_step(session)
        [listed] = [s for s in replay.dead_steps(session, limit=100_000) if s.id == step.id]
        assert (listed.plan_id, listed.kind, listed.attempt) == (plan.id, StepKind.route, step.max_attempts)
        assert listed.last_error == "TransientError: 503"


class TestReplayStep:
    def test_dead_step_goes_pending_and_its_plan_resumes(self, session: Session) -> None:
        plan, step = dead_route_step(session)
        key = step.idempotency_key
        result = replay.replay_step(session, step.id, actor="alice")
        assert (result.steps, result.plans) == ([step.id], [plan.id])
        session.refresh(step)
        session.refresh(plan)
        # Same row, same key, a fresh budget, due now and sent after commit
        assert (step.status, step.attempt, step.idempotency_key) == (StepStatus.pending, 0, key)
        assert after_commit.Send("cancellations.route", (step.id,)) in after_commit.pending_sends(session)
        assert (plan.status, plan.failed_from, plan.failure_reason) == (PlanStatus.waiting, None, None)
        assert kinds(session, "step", step.id)[-1] == "step.pending"
        assert kinds(session, "plan", plan.id)[-1] == "plan.waiting"
        resumed = session.scalars(
            select(Event).where(
                Event.entity == "plan", Event.entity_id == plan.id, Event.kind == "plan.waiting"
            )
        ).one()
        assert (resumed.from_status, resumed.data["actor"], resumed.data["replay"]) == (
            "failed",
            "alice",
            True,
        )
        assert "dead" in resumed.data["failure_reason"]

    def test_the_replayed_step_runs_to_the_next_one(self, session: Session) -> None:
        plan, step = dead_route_step(session)
        replay.replay_step(session, step.id, actor="alice")
        session.refresh(step)
        # The step can be claimed and run again like any pending step
        routing.route_step(session, steps.claim(session, step.id, task="cancellations.route"))
        session.refresh(plan)
        assert plan.status != PlanStatus.failed
        session.refresh(step)
        assert step.status == StepStatus.done

    def test_a_step_that_is_not_dead_is_refused(self, session: Session) -> None:
        plan, step = dead_route_step(session)
        replay.replay_step(session, step.id, actor="alice")
        with pytest.raises(Conflict):
            replay.replay_step(session, step.id, actor="alice")
        session.refresh(plan)
        assert plan.status == PlanStatus.waiting

    def test_unknown_step(self, session: Session) -> None:
        with pytest.raises(NotFound):
            replay.replay_step(session, 2**62, actor="alice")


class TestReplayPlan:
    def test_every_dead_step_of_the_plan(self, session: Session) -> None:
        plan, step = dead_route_step(session)
        other = session.get_one(
            WorkflowStep,
            steps.create(
                session,
                request_id=plan.request_id,
                plan_id=plan.id,
                kind=StepKind.close,
                idempotency_key=f"{plan.id}:close:test",
            ),
        )
        transitions.move(session, other, StepStatus.dead, last_error="PermanentError: x")
        result = replay.replay_plan(session, plan.id, actor="alice")
        assert sorted(result.steps) == sorted([step.id, other.id])
        session.refresh(other)
        assert other.status == StepStatus.pending

    def test_a_finished_plan_is_refused_and_nothing_changes(self, session: Session) -> None:
        plan, step = dead_route_step(session)
        transitions.move(session, plan, PlanStatus.rejected)
        with pytest.raises(Conflict):
            replay.replay_plan(session, plan.id, actor="alice")
        session.refresh(step)
        assert step.status == StepStatus.dead

    def test_a_healthy_plan_has_nothing_to_replay(self, session: Session) -> None:
        plan, _step = dead_route_step(session)
        replay.replay_plan(session, plan.id, actor="alice")
        with pytest.raises(Conflict):
            replay.replay_plan(session, plan.id, actor="alice")


class TestReplayAllDead:
    def test_replays_every_plan_and_skips_the_finished_ones(self, session: Session) -> None:
        first, first_step = dead_route_step(session)
        second, second_step = dead_route_step(session)
        finished, finished_step = dead_route_step(session)
        transitions.move(session, finished, PlanStatus.rejected)
        result = replay.replay_all_dead(session, actor="alice", limit=100_000)
        assert {first_step.id, second_step.id} <= set(result.steps)
        assert finished_step.id not in result.steps
        assert {first.id, second.id} <= set(result.plans)
        assert "rejected" in result.skipped[f"plan {finished.id}"]
        for plan in (first, second):
            session.refresh(plan)
            assert plan.status == PlanStatus.waiting
        session.refresh(finished_step)
        assert finished_step.status == StepStatus.dead
