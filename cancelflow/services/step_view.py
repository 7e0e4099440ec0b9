"""How a workflow step is shown, the same in `cancelflow show` and the detailed request list.

Every step of a request is shown, validation included (it runs before the plan exists). A finished step has
no next attempt (the column is a timer only a pending step has), and a step that succeeded shows no error (an
earlier attempt's error stays in the events of its replay, not on the step that is now done).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from cancelflow.models import WorkflowStep
from cancelflow.models.enums import StepKind, StepStatus


@dataclass(frozen=True, slots=True)
class StepView:
    id: int
    request_id: int | None
    plan_id: int | None
    kind: StepKind
    status: StepStatus
    attempt: int
    max_attempts: int
    next_attempt_at: datetime | None
    deadline_at: datetime | None
    fulfillment_order_id: int | None
    last_error: str | None
    finished_at: datetime | None
    created_date: datetime


def present_step(step: WorkflowStep) -> StepView:
    return StepView(
        id=step.id,
        request_id=step.request_id,
        plan_id=step.plan_id,
        kind=step.kind,
        status=step.status,
        attempt=step.attempt,
        max_attempts=step.max_attempts,
        next_attempt_at=step.next_attempt_at if step.status == StepStatus.pending else None,
        deadline_at=step.deadline_at,
        fulfillment_order_id=step.fulfillment_order_id,
        last_error=None if step.status == StepStatus.done else step.last_error,
        finished_at=step.finished_at,
        created_date=step.created_date,
    )


def steps_of(session: Session, request_ids: Iterable[int]) -> dict[int, list[StepView]]:
    """Every step of each request, in the order they were made, in one query."""
    ids = list(request_ids)
    found: dict[int, list[StepView]] = defaultdict(list)
    if not ids:
        return found
    for step in session.scalars(
        select(WorkflowStep).where(WorkflowStep.request_id.in_(ids)).order_by(WorkflowStep.id)
    ):
        if step.request_id is not None:
            found[step.request_id].append(present_step(step))
    return found
