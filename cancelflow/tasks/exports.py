"""Export jobs (queue `bulk`): write the file under data_dir/exports, then mark the job done."""

from __future__ import annotations

import uuid
from typing import Any

import structlog

from cancelflow.config import get_settings
from cancelflow.db import get_engine, transaction
from cancelflow.models import ExportFormat
from cancelflow.private_files import private_dir
from cancelflow.services import exports
from cancelflow.worker.app import celery_app
from cancelflow.worker.base import DbTask

log = structlog.get_logger(__name__)
PROGRESS_EVERY = 10_000


@celery_app.task(
    name="exports.run", base=DbTask, bind=True, max_retries=5, soft_time_limit=3600, time_limit=3660
)
def run_export(self: DbTask, job_id: str) -> str:
    """Write the export file (whole, again, after a crash) and record progress as it goes."""
    return self.run_job(job_id, _write_export, fail=exports.fail_job, what="export", log_key="export_job")


def _write_export(job_id: uuid.UUID) -> str:
    from cancelflow.services.queries import RequestFilters

    with transaction() as session:
        job = exports.claim_job(session, job_id)
        if job is None:
            return "finished"
        export_format = ExportFormat(job.format)
        params: dict[str, Any] = dict(job.params)
    filters = RequestFilters.parse(params.get("filters") or {})
    path = private_dir(exports.exports_dir(get_settings().data_dir)) / f"{job_id}.{export_format.value}"
    reported = 0

    def progress(done: int) -> None:
        nonlocal reported
        if done - reported >= PROGRESS_EVERY:
            reported = done
            with transaction() as s:
                exports.record_progress(s, job_id, done)

    rows = exports.write_file(
        get_engine(),
        export_format,
        path,
        filters,
        channel_id=params.get("channel_id"),
        progress=progress,
        tag=params.get("tag") or None,
    )
    with transaction() as session:
        exports.finish_job(session, job_id, path=path, rows=rows)
    log.info("export done", rows=rows, path=str(path))
    return "done"


@celery_app.task(name="exports.expire", base=DbTask, bind=True)
def expire(self: DbTask) -> int:
    """Beat: delete the files of export jobs finished longer than `export_retention` ago (queue `bulk`,
    whose worker holds the export files); the jobs then read `expired` and their download is a 410."""
    with self.session() as session:
        return exports.expire_jobs(session, retention=get_settings().export_retention)
