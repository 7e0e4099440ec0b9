"""The one mutator of an operator job's status (bulk tag jobs and exports share `JOB_MACHINE`), and the one
loop that runs a chunked bulk job (tags and decisions).

`UPDATE … SET status = :to WHERE id IN (…) AND status IN (the statuses the table lets move to :to)`: a job
in any other status is left as it is, so a finished job is never reopened by a late or duplicate message.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cancelflow.errors import Invalid, NotFound
from cancelflow.models import BulkJob, ExportJob, JobStatus
from cancelflow.models.batch_jobs import JOB_MACHINE

Job = TypeVar("Job", BulkJob, ExportJob)
UnitOfWork = Callable[[], AbstractContextManager[Session]]


class ChunkRunner(Protocol):
    """Does a bulk job's next chunk and records its progress; True while more may remain. Flushes, never
    commits."""

    def __call__(
        self, session: Session, job_id: uuid.UUID, *, chunk_size: int, params: dict[str, Any]
    ) -> bool: ...


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


@dataclass(frozen=True)
class ChunkedJobs:
    """One kind of chunked bulk job (tags, decisions): which `kinds` it runs, named a `what` job in errors,
    how it does one chunk, and its default chunk size."""

    what: str
    kinds: Collection[str]
    run_chunk: ChunkRunner
    default_chunk_size: int

    def drive(
        self,
        job_id: uuid.UUID,
        unit_of_work: UnitOfWork,
        *,
        chunk_size: int | None = None,
        stop_after: int | None = None,
    ) -> int:
        """Run the job's chunks, each in its own committed unit of work (the follow-up work a chunk asks
        for is sent when it commits), until the job is done; returns chunks run.

        A job of another kind is Invalid `wrong_kind`. Its params are read once, not per chunk (an explicit
        id list may be long). `chunk_size`: the caller's choice, else the size the job stored
        (`params["chunk_size"]`), else the default. `stop_after` ends the run early, leaving the job
        `running` as a crash would (tests, benchmarks)."""
        with unit_of_work() as session:
            row = session.execute(
                select(BulkJob.kind, BulkJob.params).where(BulkJob.id == job_id)
            ).one_or_none()
        if row is None:
            raise NotFound(f"bulk job {job_id} not found")
        kind, params = row
        if kind not in self.kinds:
            raise Invalid(f"bulk job {job_id} is a {kind} job, not a {self.what} job", code="wrong_kind")
        if chunk_size is None:
            stored = params.get("chunk_size")
            chunk_size = stored if isinstance(stored, int) and stored > 0 else self.default_chunk_size
        chunks = 0
        while stop_after is None or chunks < stop_after:
            with unit_of_work() as session:
                more = self.run_chunk(session, job_id, chunk_size=chunk_size, params=params)
            chunks += 1
            if not more:
                break
        return chunks


__all__ = ["ChunkRunner", "ChunkedJobs", "UnitOfWork", "add", "find", "get", "move", "started_by"]
