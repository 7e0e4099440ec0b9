"""Bulk tag jobs (queue `bulk`): chunked, committed, resumable; see services.bulk."""

from __future__ import annotations

import uuid

import structlog

from cancelflow.db import transaction
from cancelflow.services import bulk
from cancelflow.worker.app import celery_app
from cancelflow.worker.base import DbTask

log = structlog.get_logger(__name__)


@celery_app.task(
    name="tags.bulk", base=DbTask, bind=True, max_retries=20, soft_time_limit=600, time_limit=660
)
def run_bulk(self: DbTask, job_id: str) -> str:
    """Run the job's remaining chunks; a time limit or a lost connection re-queues it to resume."""
    return self.run_job(job_id, _run_chunks, fail=bulk.mark_failed, what="bulk job", log_key="bulk_job")


def _run_chunks(job_id: uuid.UUID) -> str:
    # Every committed chunk stays done: after an interruption the next run starts after the job's last_id.
    chunks = bulk.drive(job_id, transaction)
    log.info("bulk job done", chunks=chunks)
    return "done"
