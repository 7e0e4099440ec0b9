"""Export jobs (queue `bulk`): write the file under data_dir/exports, then mark the job done."""

from __future__ import annotations

from typing import Any

import structlog
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError

from cancelflow.config import get_settings
from cancelflow.db import get_engine, transaction
from cancelflow.errors import NotFound, Refused
from cancelflow.models import ExportFormat
from cancelflow.private_files import private_dir
from cancelflow.services import exports, limits, task_ids
from cancelflow.worker.app import celery_app
from cancelflow.worker.base import DbTask

log = structlog.get_logger(__name__)
PROGRESS_EVERY = 10_000


@celery_app.task(
    name="exports.run", base=DbTask, bind=True, max_retries=5, soft_time_limit=3600, time_limit=3660
)
def run_export(self: DbTask, job_id: str) -> str:
    """Write the export file (whole, again, after a crash) and record progress as it goes."""
    from cancelflow.services.queries import RequestFilters

    try:
        job_uuid = task_ids.checked_uuid(self.name, job_id)
    except Refused as exc:
        return self.refuse(exc, job_id=task_ids.shown(job_id))
    structlog.contextvars.bind_contextvars(export_job=job_id, task=self.name)
    try:
        with transaction() as session:
            task_ids.check_job(session, self.name, job_uuid)
            job = exports.claim_job(session, job_uuid)
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
                    exports.record_progress(s, job_uuid, done)

        rows = exports.write_file(
            get_engine(), export_format, path, filters, channel_id=params.get("channel_id"), progress=progress
        )
        with transaction() as session:
            exports.finish_job(session, job_uuid, path=path, rows=rows)
    except Refused as exc:  # another task's job: nothing was read or written
        return self.refuse(exc, job_id=job_id, job_kind=exc.kind)
    except NotFound:
        log.warning("export job vanished")  # deleted since it was queued: nothing to do
        return "missing"
    except (SoftTimeLimitExceeded, DBAPIError) as exc:
        if limits.is_statement_timeout(exc):
            # Retrying runs the same query into the same timeout: the job fails, saying why.
            log.warning("export stopped by the statement timeout", error=f"{type(exc).__name__}: {exc}")
            with transaction() as session:
                exports.fail_job(session, job_uuid, limits.timeout_message())
            return "failed"
        if self.request.retries >= (self.max_retries or 0):
            # Out of retries: the job must not stay `running` (it would hold one of its token's job slots).
            log.warning("export interrupted too often, failing", error=f"{type(exc).__name__}: {exc}")
            with transaction() as session:
                exports.fail_job(session, job_uuid, f"{type(exc).__name__}: {exc}")
            return "failed"
        log.warning("export interrupted, retrying", error=f"{type(exc).__name__}: {exc}")
        raise self.retry(exc=exc, countdown=min(60, 2**self.request.retries)) from exc
    except Exception as exc:  # bad params or a bug: the job row tells the operator, no retry
        log.exception("export failed")
        with transaction() as session:
            exports.fail_job(session, job_uuid, f"{type(exc).__name__}: {exc}")
        return "failed"
    finally:
        structlog.contextvars.clear_contextvars()
    log.info("export done", rows=rows, path=str(path))
    return "done"


@celery_app.task(name="exports.expire", base=DbTask, bind=True)
def expire(self: DbTask) -> int:
    """Beat: delete the files of export jobs finished longer than `export_retention` ago (queue `bulk`,
    whose worker holds the export files); the jobs then read `expired` and their download is a 410."""
    with self.session() as session:
        return exports.expire_jobs(session, retention=get_settings().export_retention)
