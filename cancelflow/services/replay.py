"""Dead steps and their replay: an operator resumes work that exhausted its retries.

A replayed step is the same row, so it keeps its idempotency key: a money step that reached the
gateway before it died is answered from the gateway's record, never paid twice. Its plan leaves
`failed` for the status it failed from (`failed_from`), through `transitions.move`, with events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from cancelflow.errors import Conflict, NotFound
from cancelflow.models import CancellationPlan, CancellationRequest, WorkflowStep
from cancelflow.models.enums import PlanStatus, StepStatus
from cancelflow.models.transitions import is_terminal
from cancelflow.services import keyset, locking, steps, transitions
from cancelflow.services.after_commit import enqueue_after_commit
from cancelflow.services.clock import now

log = logging.getLogger(__name__)

_TERMINAL_PLAN = frozenset(status for status in PlanStatus if is_terminal("plan", status))


@dataclass
class ReplayResult:
    steps: list[int] = field(default_factory=list)
    plans: list[int] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


_DEAD = select(WorkflowStep).where(WorkflowStep.status == StepStatus.dead)
# The order of the dead-steps queue: the most recent death first.
_DEAD_ORDER = (WorkflowStep.modified_date, WorkflowStep.id)


def dead_steps(session: Session, *, limit: int = 500) -> list[WorkflowStep]:
    """Dead steps, the most recent death first."""
    return list(dead_steps_page(session, limit=limit).rows)


def dead_steps_page(
    session: Session, *, limit: int, after: keyset.Key | None = None, before: keyset.Key | None = None
) -> keyset.KeysetPage[WorkflowStep]:
    """A page of dead steps, the most recent death first; its cursors are `(modified_date, id)`."""
    return keyset.page(
        session,
        _DEAD,
        _DEAD_ORDER,
        lambda step: (step.modified_date, step.id),
        descending=True,
        limit=limit,
        after=after,
        before=before,
    )


def replay_step(session: Session, step_id: int, *, actor: str) -> ReplayResult:
    """Resume one dead step (and its failed plan)."""
    step = session.get(WorkflowStep, step_id)
    if step is None:
        raise NotFound(f"no workflow step {step_id}")
    if step.plan_id is None:
        result = ReplayResult()
        _revive(session, _lock_step(session, step_id), actor=actor, result=result)
        return result
    return _replay(session, step.plan_id, actor=actor, step_ids=[step_id])


def replay_plan(session: Session, plan_id: int, *, actor: str) -> ReplayResult:
    """Resume every dead step of a plan, and the plan itself if it failed."""
    return _replay(session, plan_id, actor=actor, step_ids=None)


def replay_all_dead(session: Session, *, actor: str, limit: int = 500) -> ReplayResult:
    """Resume every dead step (plan by plan); a plan that cannot be resumed is skipped with the reason."""
    result = ReplayResult()
    rows = session.execute(
        select(WorkflowStep.id, WorkflowStep.plan_id)
        .where(WorkflowStep.status == StepStatus.dead)
        .order_by(WorkflowStep.id)
        .limit(limit)
    ).all()
    plan_ids = list(dict.fromkeys(row.plan_id for row in rows if row.plan_id is not None))
    loose = [row.id for row in rows if row.plan_id is None]
    # No savepoints (a savepoint's release fires `after_commit`, which would send tasks early): every
    # Conflict below is raised before the call writes anything, so skipping it leaves nothing half-done.
    for plan_id in plan_ids:
        try:
            one = _replay(session, plan_id, actor=actor, step_ids=None)
        except Conflict as exc:  # e.g. the plan ended meanwhile: report it, replay the others
            result.skipped[f"plan {plan_id}"] = exc.message
            continue
        result.steps += one.steps
        result.plans += one.plans
    for step_id in loose:
        try:
            _revive(session, _lock_step(session, step_id), actor=actor, result=result)
        except Conflict as exc:  # replayed by someone else meanwhile
            result.skipped[f"step {step_id}"] = exc.message
    return result


def _lock_step(session: Session, step_id: int) -> WorkflowStep:
    return session.scalars(
        select(WorkflowStep)
        .where(WorkflowStep.id == step_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def _replay(session: Session, plan_id: int, *, actor: str, step_ids: list[int] | None) -> ReplayResult:
    plan = session.get(CancellationPlan, plan_id)
    if plan is None:
        raise NotFound(f"no cancellation plan {plan_id}")
    request = session.get_one(CancellationRequest, plan.request_id)
    # The workflow's lock order: the order row, then the plan, then its steps.
    locking.lock_order(session, request.order_id)
    plan = session.scalars(
        select(CancellationPlan)
        .where(CancellationPlan.id == plan_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if plan.status in _TERMINAL_PLAN:
        raise Conflict(f"plan {plan.id} is {plan.status.value}: nothing to resume", code="plan_terminal")
    stmt = select(WorkflowStep).where(WorkflowStep.plan_id == plan.id)
    if step_ids is not None:
        stmt = stmt.where(WorkflowStep.id.in_(step_ids))
    else:
        stmt = stmt.where(WorkflowStep.status == StepStatus.dead)
    dead = list(
        session.scalars(
            stmt.order_by(WorkflowStep.id).with_for_update().execution_options(populate_existing=True)
        )
    )
    if step_ids is not None and any(s.status != StepStatus.dead for s in dead):
        raise Conflict(
            f"step {step_ids[0]} is {dead[0].status.value}, only a dead step is replayed", code="not_dead"
        )
    if not dead and plan.status != PlanStatus.failed:
        raise Conflict(
            f"plan {plan.id} is {plan.status.value} and has no dead step", code="nothing_to_replay"
        )
    result = ReplayResult()
    if plan.status == PlanStatus.failed:
        _resume(session, plan, actor=actor)
        result.plans.append(plan.id)
    for step in dead:
        _revive(session, step, actor=actor, result=result)
    return result


def _resume(session: Session, plan: CancellationPlan, *, actor: str) -> None:
    if plan.failed_from is None:
        raise Conflict(f"plan {plan.id} failed without a recorded status to resume", code="no_failed_from")
    target = PlanStatus(plan.failed_from)
    transitions.move(
        session,
        plan,
        target,
        failed_from=None,
        failure_reason=None,
        data={"actor": actor, "replay": True, "failure_reason": (plan.failure_reason or "")[:500]},
    )


def _revive(session: Session, step: WorkflowStep, *, actor: str, result: ReplayResult) -> None:
    if step.status != StepStatus.dead:
        raise Conflict(
            f"step {step.id} is {step.status.value}, only a dead step is replayed", code="not_dead"
        )
    # Same row, same idempotency key: the connector recognises a movement that already happened.
    transitions.move(
        session,
        step,
        StepStatus.pending,
        attempt=0,
        next_attempt_at=now(),
        finished_at=None,
        data={"actor": actor, "replay": True, "last_error": (step.last_error or "")[:500]},
    )
    enqueue_after_commit(session, steps.TASK_FOR_KIND[step.kind], step.id)
    result.steps.append(step.id)
    log.info("step %s (%s) replayed by %s", step.id, step.kind.value, actor)


__all__ = ["ReplayResult", "dead_steps", "replay_all_dead", "replay_plan", "replay_step"]
