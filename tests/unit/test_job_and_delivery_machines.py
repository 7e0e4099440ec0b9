"""Operator jobs and webhook deliveries move their status only as their tables allow."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from cancelflow.models import ExportFormat, ExportJob, JobStatus
from cancelflow.models.batch_jobs import JOB_MACHINE, JOB_TRANSITIONS
from cancelflow.models.transitions import InvalidTransition
from cancelflow.models.webhooks import DELIVERY_MACHINE, DELIVERY_TRANSITIONS, UNFINISHED, DeliveryStatus
from cancelflow.services import bulk, exports


class TestTables:
    def test_every_status_has_a_row(self) -> None:
        assert set(JOB_TRANSITIONS) == set(JobStatus)
        assert set(DELIVERY_TRANSITIONS) == set(DeliveryStatus)

    def test_finished_jobs_stay_finished(self) -> None:
        assert JOB_MACHINE.sources(JobStatus.failed) == (JobStatus.pending, JobStatus.running)
        assert JOB_MACHINE.sources(JobStatus.expired) == (JobStatus.done,)
        with pytest.raises(InvalidTransition, match="job: done -> running"):
            JOB_MACHINE.require(JobStatus.done, JobStatus.running)

    def test_only_unfinished_deliveries_are_tried(self) -> None:
        for status in DeliveryStatus:
            tried = DELIVERY_MACHINE.allows(status, DeliveryStatus.delivered)
            assert tried == (status in UNFINISHED), status

    def test_a_finished_delivery_only_starts_again_by_hand(self) -> None:
        for status in (DeliveryStatus.delivered, DeliveryStatus.dead):
            assert DELIVERY_TRANSITIONS[status] == frozenset({DeliveryStatus.pending})
        with pytest.raises(InvalidTransition):
            DELIVERY_MACHINE.require(DeliveryStatus.dead, DeliveryStatus.failed)


def _export(session: Session, status: JobStatus, **values: object) -> ExportJob:
    job = ExportJob(id=uuid.uuid4(), format=ExportFormat.csv, status=status, params={}, **values)
    session.add(job)
    session.flush()
    return job


class TestExportJobs:
    def test_a_claim_runs_a_pending_or_crashed_job_and_skips_a_finished_one(self, session: Session) -> None:
        for status in (JobStatus.pending, JobStatus.running):
            job = _export(session, status, done=5)
            assert exports.claim_job(session, job.id) is job
            assert (job.status, job.done) == (JobStatus.running, 0)
        for status in (JobStatus.done, JobStatus.failed, JobStatus.expired):
            assert exports.claim_job(session, _export(session, status).id) is None

    def test_failing_a_done_job_changes_nothing(self, session: Session) -> None:
        job = _export(session, JobStatus.done)
        exports.fail_job(session, job.id, "late")
        session.refresh(job)
        assert (job.status, job.error) == (JobStatus.done, None)

    def test_failing_a_running_job_records_why(self, session: Session) -> None:
        job = _export(session, JobStatus.running)
        exports.fail_job(session, job.id, "boom")
        session.refresh(job)
        assert (job.status, job.error) == (JobStatus.failed, "boom")

    def test_expiry_takes_done_jobs_only(self, session: Session, tmp_path: Path) -> None:
        file = tmp_path / "old.csv"
        file.write_text("id\n")
        old = datetime.now(UTC) - timedelta(days=30)
        done = _export(session, JobStatus.done, file_path=str(file), finished_at=old)
        failed = _export(session, JobStatus.failed, finished_at=old)
        exports.expire_jobs(session, retention=timedelta(days=1))
        session.refresh(done)
        session.refresh(failed)
        assert (done.status, done.file_path, file.exists()) == (JobStatus.expired, None, False)
        assert failed.status == JobStatus.failed


class TestBulkJobs:
    def test_failing_a_done_bulk_job_changes_nothing(self, session: Session) -> None:
        from cancelflow.models import BulkJob

        job = BulkJob(id=uuid.uuid4(), kind=bulk.KINDS["add"], status=JobStatus.done, params={})
        session.add(job)
        session.flush()
        bulk.mark_failed(session, job.id, "late")
        session.refresh(job)
        assert job.status == JobStatus.done
