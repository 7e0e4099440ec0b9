"""Long-running operator jobs (bulk tagging, exports): the row is the progress and the resume point."""

from __future__ import annotations

import uuid as uuid_lib
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Final

from sqlalchemy import BigInteger, DateTime, Integer, String, Text, Uuid, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from cancelflow.models.base import Base, TimestampMixin
from cancelflow.models.catalog import enum_column
from cancelflow.models.machine import Machine


class JobStatus(StrEnum):
    pending = "pending"
    running = "running"
    done = "done"
    failed = "failed"
    # An export whose file was deleted after the retention period (CANCELFLOW_EXPORT_RETENTION).
    expired = "expired"


# Bulk tag jobs and exports share it. A crashed run claims its job again (running -> running); a bulk job
# small enough finishes in its first chunk (pending -> done); only an export expires.
JOB_TRANSITIONS: Final[Mapping[JobStatus, frozenset[JobStatus]]] = {
    JobStatus.pending: frozenset({JobStatus.running, JobStatus.done, JobStatus.failed}),
    JobStatus.running: frozenset({JobStatus.running, JobStatus.done, JobStatus.failed}),
    JobStatus.done: frozenset({JobStatus.expired}),
    JobStatus.failed: frozenset(),
    JobStatus.expired: frozenset(),
}
JOB_MACHINE: Final = Machine("job", JOB_TRANSITIONS)


class ExportFormat(StrEnum):
    csv = "csv"
    xlsx = "xlsx"
    json = "json"


class BulkJob(TimestampMixin, Base):
    """A bulk operation over many requests (tags added or removed, requests approved or rejected), done in
    committed chunks in request-id order."""

    __tablename__ = "bulk_jobs"

    id: Mapped[uuid_lib.UUID] = mapped_column(Uuid, primary_key=True, default=uuid_lib.uuid4)
    kind: Mapped[str] = mapped_column(String(40))
    status: Mapped[JobStatus] = mapped_column(enum_column(JobStatus, "job_status"), default=JobStatus.pending)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    # What to do and to which requests: {"keys": [...], "ids": [...]} or {"keys": [...], "filters": {...}};
    # a decision job names its decision, actor and message instead of keys.
    params: Mapped[dict[str, object]] = mapped_column(JSONB, default=dict)
    # Keyset resume point: every request with a lower or equal id has been handled and committed.
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Requests a decision job left as they were (counted in `done` too), and the first few with the reason.
    skipped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    skips: Mapped[list[dict[str, object]]] = mapped_column(
        JSONB, default=list, server_default=text("'[]'::jsonb")
    )


class ExportJob(TimestampMixin, Base):
    """An export too large to stream in one response: written to a file the API then serves."""

    __tablename__ = "export_jobs"

    id: Mapped[uuid_lib.UUID] = mapped_column(Uuid, primary_key=True, default=uuid_lib.uuid4)
    format: Mapped[ExportFormat] = mapped_column(enum_column(ExportFormat, "export_format"))
    status: Mapped[JobStatus] = mapped_column(enum_column(JobStatus, "job_status"), default=JobStatus.pending)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    # {"filters": {...}, "channel_id": int | None}: the selection, as the list endpoint parsed it.
    params: Mapped[dict[str, object]] = mapped_column(JSONB, default=dict)
    file_path: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


__all__ = ["JOB_MACHINE", "JOB_TRANSITIONS", "BulkJob", "ExportFormat", "ExportJob", "JobStatus"]
