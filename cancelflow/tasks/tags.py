"""Bulk tag jobs (queue `bulk`): chunked, committed, resumable; see services.bulk."""

from __future__ import annotations

import structlog
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError

from cancelflow.db import transaction
from cancelflow.errors import NotFound, Refused
from cancelflow.services import bulk, limits, task_ids
from cancelflow.worker.app import celery_app
from cancelflow.worker.base import DbTask

log = structlog.get_logger(__name__)


@celery_app.task(
    name="tags.bulk", base=DbTask, bind=True, max_retries=20, soft_time_limit=600, time_limit=660
)
def run_bulk(self: DbTask, job_id: str) -> str:
    """Run the job's remaining chunks; a time limit or a lost connection re-queues it to resume."""
    try:
        job_uuid = task_ids.checked_uuid(self.name, job_id)
    except Refused as exc:
        return self.refuse(exc, job_id=task_ids.shown(job_id))
    structlog.contextvars.bind_contextvars(bulk_job=job_id, task=self.name)
    try:
        with transaction() as session:
            task_ids.check_job(session, self.name, job_uuid)
        chunks = bulk.drive(job_uuid, transaction)
    except Refused as exc:  # another task's job: nothing was read or written
        return self.refuse(exc, job_id=job_id, job_kind=exc.kind)
    except NotFound:
        log.warning("bulk job vanished")  # deleted since it was queued: nothing to do
        return "missing"
    except (SoftTimeLimitExceeded, DBAPIError) as exc:
        if limits.is_statement_timeout(exc):
            # The same chunk would run into the same timeout: the job fails, saying why (committed chunks stay).
            log.warning("bulk job stopped by the statement timeout", error=f"{type(exc).__name__}: {exc}")
            with transaction() as session:
                bulk.mark_failed(session, job_uuid, limits.timeout_message())
            return "failed"
        if self.request.retries >= (self.max_retries or 0):
            # Out of retries: the job must not stay `running` (it would hold one of its token's job slots).
            log.warning("bulk job interrupted too often, failing", error=f"{type(exc).__name__}: {exc}")
            with transaction() as session:
                bulk.mark_failed(session, job_uuid, f"{type(exc).__name__}: {exc}")
            return "failed"
        # Every committed chunk stays done; the next run starts after the job's last_id.
        log.warning("bulk job interrupted, resuming", error=f"{type(exc).__name__}: {exc}")
        raise self.retry(exc=exc, countdown=min(60, 2**self.request.retries)) from exc
    except Exception as exc:  # a bug or bad params: the job row tells the operator, no retry
        log.exception("bulk job failed")
        with transaction() as session:
            bulk.mark_failed(session, job_uuid, f"{type(exc).__name__}: {exc}")
        return "failed"
    finally:
        structlog.contextvars.clear_contextvars()
    log.info("bulk job done", chunks=chunks)
    return "done"
