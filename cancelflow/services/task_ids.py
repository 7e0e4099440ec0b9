"""Which task may act on which row: the ids a task is handed must name a row of its own kind.

Step tasks own step kinds (`steps.KINDS_FOR_TASK`); the job tasks own job tables, here. A message naming
another kind's row is refused with `Refused` and changes nothing, whoever sent it.
"""

from __future__ import annotations

import uuid
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from cancelflow.errors import Refused
from cancelflow.models import BulkJob, ExportJob

EXPORT_TASK: Final = "exports.run"
BULK_TASK: Final = "tags.bulk"
DECISION_TASK: Final = "decisions.bulk"
# Bulk jobs of these kinds are decisions (services.bulk_decisions.KINDS), run by DECISION_TASK.
DECISION_KINDS: Final = ("requests.bulk_approve", "requests.bulk_reject")
BIGINT_MAX: Final = 2**63 - 1


def checked_int(task: str, value: object) -> int:
    """`value` as a row id (a positive BIGINT), or Refused: a JSON message can carry anything there."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= BIGINT_MAX:
        shown = repr(value)[:40]
        raise Refused(f"{task} was given {type(value).__name__} {shown}, not an id", reason="bad_id")
    return value


def shown(value: object) -> object:
    """`value` as logs may carry it: an id as it is, anything else as a short repr."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= BIGINT_MAX:
        return value
    return repr(value)[:40]


def checked_uuid(task: str, value: object) -> uuid.UUID:
    """`value` as a job id, or Refused."""
    try:
        if not isinstance(value, str):
            raise TypeError(type(value).__name__)
        return uuid.UUID(value)
    except (TypeError, ValueError) as exc:
        raise Refused(f"{task} was given {repr(value)[:40]}, not a job id", reason="bad_id") from exc


def owner_of_job(session: Session, job_id: uuid.UUID) -> str | None:
    """The task that runs job `job_id`, or None when there is no such job (deleted since it was queued)."""
    if session.scalar(select(ExportJob.id).where(ExportJob.id == job_id)) is not None:
        return EXPORT_TASK
    kind = session.scalar(select(BulkJob.kind).where(BulkJob.id == job_id))
    if kind is not None:
        return DECISION_TASK if kind in DECISION_KINDS else BULK_TASK
    return None


def check_job(session: Session, task: str, job_id: uuid.UUID) -> None:
    """Refuse a job of another task's kind; a missing job is left to the task (it may have been deleted)."""
    owner = owner_of_job(session, job_id)
    if owner is not None and owner != task:
        kind = {EXPORT_TASK: "export job", DECISION_TASK: "bulk decision job"}.get(owner, "bulk job")
        raise Refused(f"{task} does not run {kind} {job_id}", reason="wrong_kind", kind=kind)
