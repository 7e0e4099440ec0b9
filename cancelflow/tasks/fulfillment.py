"""Talking to fulfillment services."""

from __future__ import annotations

from cancelflow.services import routing
from cancelflow.worker.app import celery_app
from cancelflow.worker.base import DbTask


@celery_app.task(
    name="fulfillment.notify", base=DbTask, bind=True, step_handler=staticmethod(routing.notify_step)
)
def notify(self: DbTask, step_id: int) -> str:
    """POST the signed CANCELLATION_REQUEST notification to the service's callback URL."""
    return self.run_step(step_id)
