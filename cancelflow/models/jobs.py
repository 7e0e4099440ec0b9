"""Long-running operator jobs (bulk tagging, exports): the row is the progress and the resume point."""

from __future__ import annotations

import uuid as uuid_lib
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, DateTime, Integer, String, Text, Uuid
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from cancelflow.models.base import Base, TimestampMixin
from cancelflow.models.catalog import enum_column


class JobStatus(StrEnum):
    pending = "pending"
    running = "running"
    done = "done"
    failed = "failed"
    # An export whose file was deleted after the retention period (CANCELFLOW_EXPORT_RETENTION).
    expired = "expired"


class ExportFormat(StrEnum):
    csv = "csv"
    xlsx = "xlsx"
    json = "json"


class BulkJob(TimestampMixin, Base):
    """A bulk tag operation over many requests, done in committed chunks in request-id order."""

    __tablename__ = "bulk_jobs"

    id: Mapped[uuid_lib.UUID] = mapped_column(Uuid, primary_key=True, default=uuid_lib.uuid4)
    kind: Mapped[str] = mapped_column(String(40))
    status: Mapped[JobStatus] = mapped_column(enum_column(JobStatus, "job_status"), default=JobStatus.pending)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    # What to do and to which requests: {"keys": [...], "ids": [...]} or {"keys": [...], "filters": {...}}.
    params: Mapped[dict[str, object]] = mapped_column(JSONB, default=dict)
    # Keyset resume point: every request with a lower or equal id has been handled and committed.
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


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


__all__ = ["BulkJob", "ExportFormat", "ExportJob", "JobStatus"]
