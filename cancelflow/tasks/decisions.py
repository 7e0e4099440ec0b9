"""Bulk decision jobs (queue `bulk`): approve or reject many requests in committed, resumable chunks; see
services.bulk_decisions."""

from __future__ import annotations

import uuid

import structlog

from cancelflow.db import transaction
from cancelflow.services import bulk_decisions
from cancelflow.worker.app import celery_app
from cancelflow.worker.base import DbTask

log = structlog.get_logger(__name__)


@celery_app.task(
    name=bulk_decisions.TASK, base=DbTask, bind=True, max_retries=20, soft_time_limit=600, time_limit=660
)
def run_decisions(self: DbTask, job_id: str) -> str:
    """Run the job's remaining chunks; a time limit or a lost connection re-queues it to resume."""
    return self.run_job(
        job_id, _run_chunks, fail=bulk_decisions.mark_failed, what="bulk decision job", log_key="bulk_job"
    )


def _run_chunks(job_id: uuid.UUID) -> str:
    # Every committed chunk stays decided: after an interruption the next run starts after the job's last_id.
    chunks = bulk_decisions.drive(job_id, transaction)
    log.info("bulk decision job done", chunks=chunks)
    return "done"
