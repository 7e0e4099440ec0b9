"""The one mutator of an operator job's status (bulk tag jobs and exports share `JOB_MACHINE`).

`UPDATE … SET status = :to WHERE id IN (…) AND status IN (the statuses the table lets move to :to)`: a job
in any other status is left as it is, so a finished job is never reopened by a late or duplicate message.
"""

from __future__ import annotations

import uuid
from typing import TypeVar

from sqlalchemy import update
from sqlalchemy.orm import Session

from cancelflow.errors import NotFound
from cancelflow.models import BulkJob, ExportJob, JobStatus
from cancelflow.models.batch_jobs import JOB_MACHINE

Job = TypeVar("Job", BulkJob, ExportJob)


def add(session: Session, job: Job) -> Job:
    """The new job, flushed (its row exists for the messages that will name it)."""
    session.add(job)
    session.flush()
    return job


def get(session: Session, model: type[Job], job_id: uuid.UUID, *, what: str) -> Job:
    """The job, or `NotFound` naming it as `what` ("bulk job", "export")."""
    job = session.get(model, job_id)
    if job is None:
        raise NotFound(f"{what} {job_id} not found")
    return job


def move(
    session: Session,
    model: type[BulkJob] | type[ExportJob],
    target: JobStatus,
    *job_ids: uuid.UUID,
    **values: object,
) -> None:
    """Move the jobs that may go to `target` there, setting `values` too (loaded rows follow)."""
    session.execute(
        update(model)
        .where(model.id.in_(job_ids), model.status.in_(JOB_MACHINE.sources(target)))
        .values(status=target, **values)
    )


__all__ = ["add", "get", "move"]
