"""Chasing fulfillment services for their replies: reminders and reply deadlines, on beat."""

from __future__ import annotations

from cancelflow.services import escalation
from cancelflow.worker.app import celery_app
from cancelflow.worker.base import DbTask


@celery_app.task(name="fulfillment.chase_replies", base=DbTask, bind=True)
def chase_replies(self: DbTask) -> int:
    """Send due reminders and apply due deadline actions; returns how many plans were handled."""
    with self.session() as session:
        return escalation.chase(session).plans
