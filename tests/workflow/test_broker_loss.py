"""A broker that comes back empty (a Redis restart without persistence, a flush) has the steps whose
messages it lost re-sent at once, not after the redelivery grace (`worker.broker_loss`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from celery import Celery
from sqlalchemy import update

from cancelflow.config import get_settings
from cancelflow.db import transaction
from cancelflow.models import WorkflowStep
from cancelflow.models.enums import StepKind
from cancelflow.services import after_commit, steps
from cancelflow.services.clock import now
from cancelflow.worker.broker_loss import MARKER_KEY, broker_was_emptied
from cancelflow.worker.config import celery_config
from tests.conftest import LOCAL_REDIS, SPARE_REDIS_DB, TEST_BROKER


@pytest.fixture
def spare_app() -> Iterator[tuple[Celery, redis.Redis]]:
    """A Celery app on a Redis db of its own, so that emptying it touches no other test's messages."""
    if TEST_BROKER != "redis":
        pytest.skip("the marker is looked at on Redis only; RabbitMQ keeps its queues across restarts")
    url = f"{LOCAL_REDIS}/{SPARE_REDIS_DB}"
    app = Celery("cancelflow-broker-loss", set_as_current=False)
    app.conf.update(celery_config(get_settings().model_copy(update={"broker_url": url})))
    client = redis.Redis.from_url(url)
    client.delete(MARKER_KEY)
    try:
        yield app, client
    finally:
        client.delete(MARKER_KEY)
        client.close()
        app.close()


def test_the_marker_tells_an_emptied_broker_once(spare_app: tuple[Celery, redis.Redis]) -> None:
    app, client = spare_app
    assert broker_was_emptied(app) is True  # a new broker: nothing is known of earlier messages
    assert broker_was_emptied(app) is False  # the marker is there now: nothing was lost since
    assert broker_was_emptied(app) is False
    client.delete(MARKER_KEY)  # what a restart without persistence or a flush does to it
    assert broker_was_emptied(app) is True
    assert broker_was_emptied(app) is False


def _step(next_attempt_in: timedelta) -> int:
    with transaction() as session:
        step_id = steps.create(
            session, request_id=None, kind=StepKind.validate, idempotency_key=f"lost-{uuid.uuid4().hex}"
        )
    with transaction() as session:
        session.execute(
            update(WorkflowStep)
            .where(WorkflowStep.id == step_id)
            .values(next_attempt_at=now() + next_attempt_in)
        )
    return step_id


def test_a_sweep_after_a_broker_loss_resends_the_steps_in_flight_at_once(
    database: str, sent: list[after_commit.Send]
) -> None:
    grace = get_settings().redelivery_grace
    in_flight = _step(grace - timedelta(seconds=1))  # its message went out a moment ago
    timer = _step(grace + timedelta(hours=1))  # a reply deadline: no message is out for it
    sent.clear()

    with transaction() as session:
        steps.sweep_due(session)  # the broker is fine: the step in flight waits for its message
    assert in_flight not in [s.args[0] for s in sent]

    with transaction() as session:
        steps.sweep_due(session, lost_at=now())
    resent = [s.args[0] for s in sent if s.args]
    assert in_flight in resent  # at once, not after the grace
    assert timer not in resent

    sent.clear()
    with transaction() as session:
        steps.sweep_due(session, lost_at=None)  # re-sent once: its next send is stamped after the loss
    assert in_flight not in [s.args[0] for s in sent]
