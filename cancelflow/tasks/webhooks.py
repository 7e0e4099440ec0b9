"""Outbound webhook delivery and its beat sweep."""

from __future__ import annotations

from cancelflow.errors import Refused
from cancelflow.services import task_ids, webhooks
from cancelflow.worker.app import celery_app
from cancelflow.worker.base import DbTask


@celery_app.task(name="webhooks.deliver", base=DbTask, bind=True)
def deliver(self: DbTask, delivery_id: int) -> str:
    """POST one outbox row to its subscriber; the service records the attempt and schedules a retry."""
    try:
        checked = task_ids.checked_int(self.name, delivery_id)
    except Refused as exc:
        return self.refuse(exc, delivery_id=task_ids.shown(delivery_id))
    with self.session() as session:
        return webhooks.deliver(session, checked)


@celery_app.task(name="webhooks.sweep", base=DbTask, bind=True)
def sweep(self: DbTask) -> int:
    """Re-send deliveries whose time has come: lost messages, and retries too far off for a countdown."""
    with self.session() as session:
        return webhooks.sweep_due(session)
