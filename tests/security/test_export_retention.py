"""Export retention in the service: only files of jobs finished longer ago than the retention go.

(The beat task, the worker and the 410 on download are exercised end to end in test_job_limits_worker.)
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import text

from cancelflow.db import transaction
from cancelflow.models import ExportFormat, ExportJob, JobStatus
from cancelflow.services import exports
from cancelflow.worker.config import ROUTES, celery_config


def finished_job(
    directory: Path, age: timedelta, status: JobStatus = JobStatus.done
) -> tuple[uuid.UUID, Path]:
    path = directory / f"{uuid.uuid4()}.csv"
    path.write_text("id\n1\n")
    with transaction() as session:
        job = exports.create_job(session, ExportFormat.csv, filters={})
        job_id = job.id
        session.execute(
            text(
                "UPDATE export_jobs SET status = :status, file_path = :path, finished_at = now() - :age "
                "WHERE id = :id"
            ),
            {"status": status.value, "path": str(path), "age": age, "id": job_id},
        )
    return job_id, path


def test_only_files_past_the_retention_are_deleted(database: str, tmp_path: Path) -> None:
    old_id, old_file = finished_job(tmp_path, timedelta(days=8))
    recent_id, recent_file = finished_job(tmp_path, timedelta(hours=1))
    failed_id, _ = finished_job(tmp_path, timedelta(days=8), JobStatus.failed)

    with transaction() as session:
        expired = exports.expire_jobs(session, retention=timedelta(days=7))
    assert expired >= 1  # other tests' old jobs may expire too

    assert not old_file.exists()
    assert recent_file.exists()
    with transaction() as session:
        old, recent, failed = (session.get(ExportJob, i) for i in (old_id, recent_id, failed_id))
        assert old is not None
        assert recent is not None
        assert failed is not None
        assert (old.status, old.file_path) == (JobStatus.expired, None)
        assert (recent.status, recent.file_path) == (JobStatus.done, str(recent_file))
        assert failed.status == JobStatus.failed

    with transaction() as session:  # a second sweep finds nothing more of these
        exports.expire_jobs(session, retention=timedelta(days=7))
    assert recent_file.exists()


def test_the_sweep_is_on_the_beat_schedule_and_runs_where_the_files_are() -> None:
    from cancelflow.config import get_settings

    schedule = celery_config(get_settings())["beat_schedule"]
    assert schedule["exports.expire"]["task"] == "exports.expire"
    assert ROUTES["exports.*"] == {"queue": "bulk"}
