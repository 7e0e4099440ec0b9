"""How many SQL statements each step of one request costs: the hot path's round trips, pinned.

A step's time is mostly its round trips to PostgreSQL (bench/steps.py shows CPU and wall time per step).
These counts are exact so that a change which adds a query to a step shows up here and is a decision,
not an accident. Commits are not statements; the accept is the fulfillment service's reply through the
API, without the API's token lookup and response rendering.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import event, select

from cancelflow.db import get_engine, transaction
from cancelflow.models import CancellationRequest
from cancelflow.models.enums import RequestStatus
from cancelflow.services import after_commit
from tests.factories import load, order_payload, service_payload
from tests.inprocess import request_steps

EXPECTED = {
    "submit": 5,
    "validate": 7,
    "route": 10,
    "notify (no HTTP)": 2,
    "accept (API)": 8,
    "loyalty credit": 7,
    "close": 6,
}


@pytest.fixture
def no_webhook_listeners(database: str) -> Iterator[None]:
    """Counts without outbox writes: subscriptions other tests left active are paused for this test."""
    from sqlalchemy import update

    from cancelflow.models import WebhookSubscription

    with transaction() as session:
        paused = list(
            session.scalars(
                update(WebhookSubscription)
                .where(WebhookSubscription.is_active)
                .values(is_active=False)
                .returning(WebhookSubscription.id)
            )
        )
    yield
    with transaction() as session:
        session.execute(
            update(WebhookSubscription).where(WebhookSubscription.id.in_(paused)).values(is_active=True)
        )


@pytest.mark.usefixtures("no_webhook_listeners")
def test_statements_per_step_of_one_request(sent: list[after_commit.Send]) -> None:
    svc = service_payload(secret=secrets.token_hex(8))
    order = order_payload(service_handle=svc["handle"], quantity=1)
    load({"fulfillment_services": [svc], "orders": [order]})
    counts: Counter[str] = Counter()
    current = [""]

    def count(*_: object) -> None:
        counts[current[0]] += 1

    engine = get_engine(None)
    event.listen(engine, "before_cursor_execute", count)
    try:
        for name, work in request_steps(order["items"][0]["id"], sent):
            current[0] = name
            try:
                with transaction() as session:
                    work(session)
            finally:
                current[0] = ""
    finally:
        event.remove(engine, "before_cursor_execute", count)
    with transaction() as session:
        status = session.scalar(
            select(CancellationRequest.status).where(
                CancellationRequest.order_item_id == order["items"][0]["id"]
            )
        )
    assert status == RequestStatus.completed
    assert {name: counts[name] for name in EXPECTED} == EXPECTED
