"""The one mutator of an operator job's status (bulk tag jobs and exports share `JOB_MACHINE`).

`UPDATE … SET status = :to WHERE id IN (…) AND status IN (the statuses the table lets move to :to)`: a job
in any other status is left as it is, so a finished job is never reopened by a late or duplicate message.
"""

from __future__ import annotations

import uuid
from typing import TypeVar

from sqlalchemy import select, update
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


def find(session: Session, job_id: uuid.UUID) -> BulkJob | ExportJob | None:
    """The bulk or export job with this id, or None."""
    return session.get(BulkJob, job_id) or session.get(ExportJob, job_id)


def started_by(session: Session, user_id: int, *, limit: int = 50) -> list[BulkJob | ExportJob]:
    """The newest jobs a console user started (`params["user_id"]`), bulk and export jobs together."""
    found: list[BulkJob | ExportJob] = []
    for model in (BulkJob, ExportJob):
        found.extend(
            session.scalars(
                select(model)
                .where(model.params["user_id"].as_integer() == user_id)
                .order_by(model.created_date.desc())
                .limit(limit)
            )
        )
    found.sort(key=lambda job: job.created_date, reverse=True)
    return found[:limit]


__all__ = ["add", "find", "get", "move", "started_by"]
