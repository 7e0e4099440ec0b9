"""Outbound webhook delivery and its beat sweep."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from cancelflow.errors import Refused
from cancelflow.services import task_ids
from cancelflow.services.webhooks import delivery as webhook_delivery
from cancelflow.worker.app import celery_app
from cancelflow.worker.base import DB_AWAY_MAX_RETRIES, DbTask


@celery_app.task(name="webhooks.deliver", base=DbTask, bind=True, max_retries=DB_AWAY_MAX_RETRIES)
def deliver(self: DbTask, delivery_id: int) -> str:
    """POST one outbox row to its subscriber; the service records the attempt and schedules a retry."""
    try:
        checked = task_ids.checked_int(self.name, delivery_id)
    except Refused as exc:
        return self.refuse(exc, delivery_id=task_ids.shown(delivery_id))
    try:
        with self.session() as session:
            return webhook_delivery.deliver(session, checked)
    except OperationalError as exc:
        # The database is away: the row keeps its redelivery grace, so the message is sent again shortly
        # (bounded) rather than left to the sweep.
        self.retry_while_db_away(exc)


@celery_app.task(name="webhooks.sweep", base=DbTask, bind=True)
def sweep(self: DbTask) -> int:
    """Re-send deliveries whose time has come: lost messages, and retries too far off for a countdown."""
    with self.session() as session:
        return webhook_delivery.sweep_due(session)
