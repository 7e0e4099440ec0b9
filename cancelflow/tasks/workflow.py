"""Beat-driven housekeeping."""

from __future__ import annotations

from cancelflow.services import steps, tallies
from cancelflow.services.clock import now
from cancelflow.worker.app import celery_app
from cancelflow.worker.base import DbTask
from cancelflow.worker.broker_loss import broker_was_emptied


@celery_app.task(name="workflow.sweep_due", base=DbTask, bind=True)
def sweep_due(self: DbTask) -> int:
    """Re-send due steps: lost messages, retries whose countdown was too long for the broker, timers.

    A broker found emptied (a flush) has every step sent before now re-sent at once too."""
    lost = broker_was_emptied(self.app)
    with self.session() as session:
        sent = steps.sweep_due(session, lost_at=now() if lost else None)
    # The tally rows written since the last tick, folded into one per key (their sums do not change).
    with self.session() as session:
        tallies.compact(session)
    return sent


@celery_app.task(name="workflow.sweep_lost", base=DbTask, bind=True)
def sweep_lost(self: DbTask) -> int:
    """The broker came back empty (`worker.broker_loss`): re-send every step sent before now, and the due."""
    with self.session() as session:
        return steps.sweep_due(session, lost_at=now())


@celery_app.task(name="workflow.ping", acks_late=True, ignore_result=True)
def ping(counter_key: str | None = None) -> None:
    """Does nothing but count itself: a liveness probe and the benchmark's raw-throughput yardstick."""
    if counter_key:
        from cancelflow.services.counters import incr

        incr(counter_key)
