"""Beat-driven housekeeping."""

from __future__ import annotations

from cancelflow.services import steps
from cancelflow.worker.app import celery_app
from cancelflow.worker.base import DbTask


@celery_app.task(name="workflow.sweep_due", base=DbTask, bind=True)
def sweep_due(self: DbTask) -> int:
    """Re-send due steps: lost messages, retries whose countdown was too long for the broker, timers."""
    with self.session() as session:
        return steps.sweep_due(session)


@celery_app.task(name="workflow.ping", acks_late=True, ignore_result=True)
def ping(counter_key: str | None = None) -> None:
    """Does nothing but count itself: a liveness probe and the benchmark's raw-throughput yardstick."""
    if counter_key:
        from cancelflow.services.counters import incr

        incr(counter_key)
