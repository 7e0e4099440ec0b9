"""Workflow steps: create, claim, finish, fail, and sweep the due ones back onto the broker.

A step row is claimed with `SELECT … FOR UPDATE SKIP LOCKED` for the length of the transaction that
does its work. A second worker holding the same message finds it locked and leaves; a worker killed
mid-step drops its connection, PostgreSQL releases the lock and rolls the work back, and the row is due
again. No lease clock is needed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Executable,
    Integer,
    Interval,
    Select,
    bindparam,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from cancelflow.config import get_settings
from cancelflow.errors import AlreadyHandled, Refused
from cancelflow.models import CancellationPlan, WorkflowStep
from cancelflow.models.base import table_of
from cancelflow.models.enums import PlanStatus, StepKind, StepStatus
from cancelflow.models.transitions import allows
from cancelflow.services import transitions
from cancelflow.services.after_commit import enqueue_after_commit
from cancelflow.services.clock import now
from cancelflow.services.redelivery import REDELIVERY_BACKOFF_CAP, redelivery_wait
from cancelflow.services.task_ids import checked_int

log = logging.getLogger(__name__)

# The wire contract between a step kind and the Celery task that runs it.
TASK_FOR_KIND: Final[dict[StepKind, str]] = {
    StepKind.validate: "cancellations.validate",
    StepKind.route: "cancellations.route",
    StepKind.notify: "fulfillment.notify",
    StepKind.refund: "payments.refund",
    StepKind.bank_transfer: "payments.bank_transfer",
    StepKind.loyalty_credit: "loyalty.credit",
    StepKind.close: "cancellations.close",
}

# What each step task may run, derived from the contract above so the two can never disagree: a task
# handed the id of another kind's step (a forged or misrouted message) refuses it.
KINDS_FOR_TASK: Final[Mapping[str, frozenset[StepKind]]] = {
    task: frozenset(kind for kind, owner in TASK_FOR_KIND.items() if owner == task)
    for task in dict.fromkeys(TASK_FOR_KIND.values())
}
# The statuses a step runs from: those the step machine lets finish (`done`); any other is over, or dead.
RUNNABLE: Final = frozenset(status for status in StepStatus if allows("step", status, StepStatus.done))
# How far past `now + redelivery_grace` a step's next attempt may lie and it still run: every message we send
# finds it within the grace (a new step, a sweep) or due (a retry countdown, a replay); later means a stale
# duplicate or a forged message trying to spend the step's attempts early. Slack for clocks and delivery.
EARLY_TOLERANCE: Final = timedelta(seconds=5)

SWEEP_LOCK_KEY: Final = 0x63616E63  # pg advisory lock id held by the one running sweep


_STEPS = table_of(WorkflowStep)
_STEP_COLUMNS: Final = (
    "request_id",
    "plan_id",
    "kind",
    "status",
    "attempt",
    "max_attempts",
    "next_attempt_at",
    "idempotency_key",
    "fulfillment_order_id",
    "result",
    "version",
    "created_date",
    "modified_date",
)
_INSERT_STEP = (
    insert(_STEPS)
    .values({name: bindparam(name) for name in _STEP_COLUMNS})
    .on_conflict_do_nothing(index_elements=[_STEPS.c.idempotency_key])
    .returning(_STEPS.c.id, _STEPS.c.status)
)
# The same, writing an event row in the same round trip (`transitions.event_row` names its parameters).
_INSERT_STEP_WITH_EVENT = transitions.carrying_event(_INSERT_STEP)
_STEP_BY_KEY = select(_STEPS.c.id, _STEPS.c.status).where(_STEPS.c.idempotency_key == bindparam("key"))
_CLAIM = (
    select(WorkflowStep)
    .where(
        WorkflowStep.id == bindparam("step_id"),
        WorkflowStep.kind.in_(bindparam("kinds", expanding=True)),
        WorkflowStep.status.in_(bindparam("statuses", expanding=True)),
        WorkflowStep.next_attempt_at <= bindparam("due_by"),
    )
    .with_for_update(skip_locked=True)
)
_DONE = _STEPS.alias("done")
_WHY_NOT = select(_STEPS.c.kind, _STEPS.c.status, _STEPS.c.next_attempt_at).where(
    _STEPS.c.id == bindparam("step_id")
)


def kinds_for(task: str) -> frozenset[StepKind]:
    """The step kinds `task` owns; a name that owns none is a programming error."""
    kinds = KINDS_FOR_TASK.get(task)
    if kinds is None:
        raise ValueError(f"{task!r} runs no workflow step")
    return kinds


def create(
    session: Session,
    *,
    request_id: int | None,
    kind: StepKind,
    idempotency_key: str,
    plan_id: int | None = None,
    fulfillment_order_id: int | None = None,
    event: Mapping[str, object] | None = None,
) -> int:
    """Insert the step (once per key), ask for its task after commit, and return the step's id.

    `event`: an event row (`transitions.event_row`) written with the insert, in the same round trip; it is
    written whether the step is new or not, as a separate `record_event` before the insert would be.
    """
    connection = session.connection()
    params = _new_step(request_id, plan_id, kind, idempotency_key, fulfillment_order_id)
    # One round trip when the step is new; only a repeat of the same key reads the existing row.
    row = (
        connection.execute(
            _INSERT_STEP if event is None else _INSERT_STEP_WITH_EVENT, {**(event or {}), **params}
        ).first()
        or connection.execute(_STEP_BY_KEY, {"key": idempotency_key}).one()
    )
    if row.status == StepStatus.pending:
        enqueue_after_commit(session, TASK_FOR_KIND[kind], row.id)
    return int(row.id)


def _new_step(
    request_id: int | None,
    plan_id: int | None,
    kind: StepKind,
    idempotency_key: str,
    fulfillment_order_id: int | None,
) -> dict[str, object]:
    settings = get_settings()
    stamp = now()
    return {
        "request_id": request_id,
        "plan_id": plan_id,
        "kind": kind,
        "status": StepStatus.pending,
        "attempt": 0,
        "max_attempts": settings.step_max_attempts,
        "next_attempt_at": stamp + settings.redelivery_grace,
        "idempotency_key": idempotency_key,
        "fulfillment_order_id": fulfillment_order_id,
        "result": {},
        "version": 1,
        "created_date": stamp,
        "modified_date": stamp,
    }


def insert_when(condition: ColumnElement[bool]) -> Executable:
    """A step insert made only while `condition` holds (in the statement itself, so under its snapshot),
    for `create_when`. Build it once, at import: building a statement costs more than running it."""
    return (
        insert(_STEPS)
        .from_select(
            list(_STEP_COLUMNS),
            select(*(bindparam(name, type_=_STEPS.c[name].type) for name in _STEP_COLUMNS)).where(condition),
        )
        .on_conflict_do_nothing(index_elements=[_STEPS.c.idempotency_key])
        .returning(_STEPS.c.id, _STEPS.c.status)
    )


def create_when(
    session: Session,
    statement: Executable,
    parameters: Mapping[str, object],
    *,
    plan: CancellationPlan,
    kind: StepKind,
) -> int | None:
    """Make the plan's step of `kind` with `statement` (from `insert_when`), given the parameters its
    condition names, and ask for its task after commit: its id, or None when nothing was inserted, because
    the condition did not hold or the step exists already (the caller tells which, and `create`s it then)."""
    params = _new_step(plan.request_id, plan.id, kind, f"{plan.id}:{kind.value}:1", None)
    row = session.connection().execute(statement, {**parameters, **params}).first()
    if row is None:
        return None
    enqueue_after_commit(session, TASK_FOR_KIND[kind], row.id)
    return int(row.id)


def create_for_plan(
    session: Session,
    plan: CancellationPlan,
    kind: StepKind,
    *,
    idempotency_key: str | None = None,
    event: Mapping[str, object] | None = None,
) -> int:
    """`create` the plan's step of `kind`: once per plan, so the key defaults to `<plan id>:<kind>:1`."""
    return create(
        session,
        request_id=plan.request_id,
        plan_id=plan.id,
        kind=kind,
        idempotency_key=idempotency_key or f"{plan.id}:{kind.value}:1",
        event=event,
    )


def claim(session: Session, step_id: int, *, task: str) -> WorkflowStep:
    """Lock a pending, due step of a kind `task` owns for this transaction.

    Raises AlreadyHandled when the step is taken by another worker, no longer pending or not yet due (a
    duplicate or stale message), Refused when `step_id` is no step or a step of a kind `task` does not run.
    """
    kinds = kinds_for(task)
    step_id = checked_int(task, step_id)
    # A sweep that re-sends a row stamps its next re-send up to REDELIVERY_BACKOFF_CAP graces ahead; the message
    # it sent must still find the row due, or a lost step would be re-sent and refused for ever.
    due_by = now() + get_settings().redelivery_grace * (REDELIVERY_BACKOFF_CAP + 1) + EARLY_TOLERANCE
    step = session.scalars(
        _CLAIM, {"step_id": step_id, "kinds": sorted(kinds), "statuses": sorted(RUNNABLE), "due_by": due_by}
    ).one_or_none()
    if step is not None:
        return step
    # Why not: read without a lock, only to name the reason (nothing is changed on this path).
    row = session.connection().execute(_WHY_NOT, {"step_id": step_id}).one_or_none()
    if row is None:
        raise Refused(f"{task} was given step {step_id}, which does not exist", reason="unknown_id")
    kind, status = StepKind(row.kind), StepStatus(row.status)
    if kind not in kinds:
        raise Refused(
            f"{task} does not run {kind.value} steps (step {step_id})", reason="wrong_kind", kind=kind.value
        )
    if status not in RUNNABLE:
        raise AlreadyHandled(f"step {step_id} is {status.value}", code=f"step_{status.value}")
    if row.next_attempt_at > due_by:
        raise AlreadyHandled(f"step {step_id} is not due until {row.next_attempt_at.isoformat()}")
    raise AlreadyHandled(f"step {step_id} is running elsewhere")


_SUCCESSORS = (
    select(_STEPS.c.id, _STEPS.c.kind)
    .select_from(_STEPS.join(_DONE, _DONE.c.request_id == _STEPS.c.request_id))
    .where(
        _DONE.c.id == bindparam("step_id"),
        _DONE.c.status == StepStatus.done,
        _STEPS.c.id > _DONE.c.id,
        _STEPS.c.status == StepStatus.pending,
        _STEPS.c.attempt == 0,
    )
    .order_by(_STEPS.c.id)
)


def successors_of(session: Session, step_id: int) -> list[tuple[str, int]]:
    """The (task, step id) of each step its request made after step `step_id` that has not been tried yet,
    when that step is done: what a task finding its own step done may go on to run (a worker that ran it
    may have died before running what came next). Empty when the step is not done."""
    rows = session.connection().execute(_SUCCESSORS, {"step_id": step_id}).all()
    return [(TASK_FOR_KIND[StepKind(row.kind)], int(row.id)) for row in rows]


def finish(session: Session, step: WorkflowStep, result: dict[str, object] | None = None) -> None:
    transitions.move(session, step, StepStatus.done, finished_at=now(), result=result or {})


def backoff(attempt: int) -> timedelta:
    """Exponential backoff with equal jitter, capped by settings."""
    settings = get_settings()
    base = settings.retry_backoff_base.total_seconds()
    cap = settings.retry_backoff_max.total_seconds()
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    return timedelta(seconds=delay / 2 + random.uniform(0, delay / 2))


def record_failure(
    session: Session,
    step_id: int,
    error: str,
    *,
    permanent: bool,
    retry_after: float | None = None,
    task: str | None = None,
) -> StepStatus:
    """Count a failed attempt; past the budget (or when permanent) the step goes dead and its plan fails.

    `task`: count it only if the step is of a kind that task owns. A task's failure may come before its
    claim proved the kind (the database went away), and must not spend another kind's attempts.
    `retry_after`: the far side's `Retry-After`, in seconds; the next attempt waits at least that long.
    """
    query = select(WorkflowStep).where(WorkflowStep.id == step_id).with_for_update()
    if task is not None:
        query = query.where(WorkflowStep.kind.in_(sorted(kinds_for(task))))
    step = session.scalars(query).one_or_none()
    if step is None or step.status != StepStatus.pending:
        return step.status if step is not None else StepStatus.cancelled
    attempt = step.attempt + 1
    if permanent or attempt >= step.max_attempts:
        transitions.move(
            session,
            step,
            StepStatus.dead,
            attempt=attempt,
            last_error=error[:4000],
            data={"error": error[:500]},
        )
        if step.plan_id is not None:
            fail_plan(session, step.plan_id, f"step {step.id} ({step.kind.value}) dead: {error}"[:2000])
        return StepStatus.dead
    delay = backoff(attempt)
    if retry_after is not None:
        delay = max(delay, timedelta(seconds=retry_after))
    session.execute(
        update(WorkflowStep)
        .where(WorkflowStep.id == step.id)
        .values(attempt=attempt, last_error=error[:4000], next_attempt_at=now() + delay, modified_date=now())
    )
    transitions.record_event(
        session,
        "step",
        step.id,
        "step.retry",
        data={"attempt": attempt, "error": error[:500], "delay_seconds": round(delay.total_seconds(), 3)},
    )
    if delay <= get_settings().max_countdown:
        enqueue_after_commit(session, TASK_FOR_KIND[step.kind], step.id, countdown=delay.total_seconds())
    return StepStatus.pending


def fail_plan(session: Session, plan_id: int, reason: str) -> None:
    plan = session.scalars(
        select(CancellationPlan).where(CancellationPlan.id == plan_id).with_for_update()
    ).one_or_none()
    if plan is None or not allows("plan", plan.status, PlanStatus.failed):
        return  # already failed, or ended: the plan machine has no way to `failed` from there
    transitions.move(
        session,
        plan,
        PlanStatus.failed,
        failed_from=plan.status.value,
        failure_reason=reason,
        data={"reason": reason[:500]},
    )


def _due_steps(*, lost: bool) -> Select[int, StepKind]:
    # next_attempt_at = last send + grace (create, sweep) or + backoff (retry): sent before the start.
    grace = bindparam("grace", type_=Interval())
    sent_before_restart = WorkflowStep.next_attempt_at < func.pg_postmaster_start_time() + grace
    if lost:
        lost_at = bindparam("lost_at", type_=DateTime(timezone=True))
        sent_before_restart = or_(sent_before_restart, WorkflowStep.next_attempt_at < lost_at + grace)
    return (
        select(WorkflowStep.id, WorkflowStep.kind)
        .where(
            WorkflowStep.status == StepStatus.pending,
            or_(
                WorkflowStep.next_attempt_at <= bindparam("stamp", type_=DateTime(timezone=True)),
                sent_before_restart,
            ),
        )
        .order_by(WorkflowStep.next_attempt_at)
        .limit(bindparam("limit", type_=Integer()))
        .with_for_update(skip_locked=True)
    )


# Built once: the sweep runs every tick, and building and keying the statement cost more than running it.
_DUE: Final = _due_steps(lost=False)
_DUE_OR_LOST: Final = _due_steps(lost=True)


def sweep_due(session: Session, *, limit: int = 500, lost_at: datetime | None = None) -> int:
    """Re-send every pending step whose time has come (a lost message, a retry, a waking timer).

    Also every pending step whose message went out before the database server last started: a worker
    that took that message while the server was away could neither run the step nor record the failure,
    so the message is gone. Such a step is re-sent at once instead of after the redelivery grace; once
    re-sent, its next send is stamped after the start, so each restart re-sends it only once. The same
    for every step sent before `lost_at`, when the broker has lost its messages (`worker.broker_loss`).

    Runs under a transaction-scoped advisory lock: a second beat, or an overlapping sweep, does nothing.
    """
    if not session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": SWEEP_LOCK_KEY}).scalar():
        log.info("another sweep holds the lock; skipping")
        return 0
    stamp = now()
    due = session.execute(
        _DUE if lost_at is None else _DUE_OR_LOST,
        {"stamp": stamp, "grace": get_settings().redelivery_grace, "lost_at": lost_at, "limit": limit},
    ).all()
    if not due:
        return 0
    session.execute(
        update(WorkflowStep)
        .where(WorkflowStep.id.in_([row.id for row in due]))
        .values(next_attempt_at=stamp + redelivery_wait(WorkflowStep.modified_date, stamp))
    )
    for row in due:
        enqueue_after_commit(session, TASK_FOR_KIND[row.kind], row.id)
    log.info("sweep re-sent %d due steps", len(due))
    return len(due)
