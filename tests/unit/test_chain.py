"""What a chain takes to run in-process and what it leaves to the broker (`worker.chain`), on an app whose worker
consumes some queues only, as `-Q` leaves it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from celery import Celery

from cancelflow.config import get_settings
from cancelflow.services import after_commit
from cancelflow.services.after_commit import Send
from cancelflow.worker.chain import Chain
from cancelflow.worker.config import celery_config


@pytest.fixture
def app() -> Iterator[Celery]:
    """An app whose worker consumes `default`, `route` and `intake` (not `money`)."""
    app = Celery("chain-test", set_as_current=False)
    app.conf.update(celery_config(get_settings()))
    app.amqp.queues.select(["default", "route", "intake"])
    yield app
    app.close()


@pytest.fixture
def published() -> Iterator[list[Send]]:
    sends: list[Send] = []
    after_commit.set_sender(sends.append)
    yield sends
    after_commit.set_sender(None)


def chain(app: Celery, *, max_steps: int = 8, seconds: float = 60) -> Chain:
    return Chain(app, max_steps, time.monotonic() + seconds)


def test_a_due_step_on_a_consumed_queue_is_taken(app: Celery) -> None:
    c = chain(app)
    assert c.take(Send("cancellations.route", (2,)))
    assert c.take(Send("fulfillment.notify", (3,)))
    assert c.next() == ("cancellations.route", 2)
    assert c.next() == ("fulfillment.notify", 3)
    assert c.next() is None


@pytest.mark.parametrize(
    "send",
    [
        Send("payments.refund", (4,)),  # the money queue is another pool's
        Send("cancellations.route", (2,), countdown=1.5),  # a retry's backoff is a wait
        Send("webhooks.deliver", (9,)),  # not a step
        Send("exports.run", ("8d1f0c9e-0000-4000-8000-000000000000",)),  # not a step
    ],
)
def test_what_must_wait_or_cross_to_another_pool_is_left_to_the_broker(app: Celery, send: Send) -> None:
    c = chain(app)
    assert not c.take(send)
    assert c.next() is None


def test_the_step_bound_counts_the_steps_run_and_taken(app: Celery) -> None:
    c = chain(app, max_steps=2)
    assert c.take(Send("cancellations.validate", (1,)))
    assert c.next() == ("cancellations.validate", 1)
    assert c.take(Send("cancellations.route", (2,)))
    assert not c.take(Send("fulfillment.notify", (3,)))  # a third successor: published
    assert Chain.begin(app) is not None


def test_past_the_time_bound_what_was_taken_is_published(app: Celery, published: list[Send]) -> None:
    c = chain(app, seconds=0.05)
    assert c.take(Send("cancellations.route", (2,)))
    time.sleep(0.06)
    assert not c.take(Send("fulfillment.notify", (3,)))
    assert c.next() is None
    assert published == [Send("cancellations.route", (2,))]


def test_resuming_takes_what_may_run_here(app: Celery) -> None:
    c = chain(app)
    c.resume([("payments.refund", 4), ("cancellations.close", 5)])
    assert c.next() == ("cancellations.close", 5)
    assert c.next() is None


def test_chaining_is_off_at_zero_steps(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "chain_max_steps", 0)
    assert Chain.begin(app) is None
