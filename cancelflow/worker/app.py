"""The Celery app. `celery -A cancelflow.worker.app worker|beat|flower` starts from here."""

from __future__ import annotations

import logging

from celery import Celery, signals

from cancelflow.config import get_settings
from cancelflow.errors import TransientError
from cancelflow.services import after_commit
from cancelflow.services import recovery as _recovery  # noqa: F401  (sweeps at once after a DB restart)
from cancelflow.worker import metrics as _metrics  # noqa: F401  (connects the task-latency signals)
from cancelflow.worker import privacy as _privacy  # noqa: F401  (masks received arguments)
from cancelflow.worker.broker_loss import BrokerLossCheck, HeldMessages
from cancelflow.worker.intake_guard import IntakeGuard

log = logging.getLogger(__name__)

TASK_MODULES = [
    "cancelflow.tasks.cancellations",
    "cancelflow.tasks.decisions",
    "cancelflow.tasks.escalation",
    "cancelflow.tasks.exports",
    "cancelflow.tasks.fulfillment",
    "cancelflow.tasks.payments",
    "cancelflow.tasks.tags",
    "cancelflow.tasks.webhooks",
    "cancelflow.tasks.workflow",
]

# The privacy AMQP class redacts personal data from the argument reprs Flower shows (worker.privacy).
celery_app = Celery("cancelflow", include=TASK_MODULES, amqp="cancelflow.worker.privacy:MaskingAMQP")
# A module path, so settings are read when Celery first needs its configuration, not at import.
celery_app.config_from_object("cancelflow.worker.celeryconfig")
# What arrives on the storefronts' intake queue runs only if it is a submission (worker.intake_guard).
celery_app.steps["consumer"].add(IntakeGuard)
# A broker that comes back empty (a Redis restart, a flush) has its steps re-sent at once (worker.broker_loss).
celery_app.steps["consumer"].add(BrokerLossCheck)
# What the worker held when its broker connection broke goes back to its queue on reconnecting (same module).
celery_app.steps["consumer"].add(HeldMessages)


def send(send: after_commit.Send) -> None:
    from kombu.exceptions import OperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError

    try:
        celery_app.send_task(
            send.task, args=list(send.args), kwargs=dict(send.kwargs) or None, countdown=send.countdown
        )
    except (OperationalError, RedisConnectionError, ConnectionError) as exc:
        raise TransientError(f"the broker does not answer: {exc}", code="broker_unavailable") from exc


def install_sender() -> None:
    """Route the sends of this process to the broker again after a test replaced the sender (it is where
    they go by default: `after_commit.DEFAULT_SENDER`)."""
    after_commit.set_sender(None)


@signals.setup_logging.connect
def _setup_logging(**_: object) -> None:
    from cancelflow.config.logging import configure_logging

    configure_logging(get_settings())


@signals.worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    # A forked child must never share the parent's pooled database connections.
    from cancelflow.db import get_engine

    get_engine.cache_clear()
