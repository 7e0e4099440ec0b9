"""How many SQL statements each step of one request costs: the hot path's round trips, pinned.

A step's time is mostly its round trips to PostgreSQL (bench/steps.py shows CPU and wall time per step).
These counts are exact so that a change which adds a query to a step shows up here and is a decision,
not an accident. Commits are not statements; the accept is the fulfillment service's reply through the
API, without the API's token lookup and response rendering.
"""

from __future__ import annotations

import secrets
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from cancelflow.db import get_engine, transaction
from cancelflow.models import CancellationRequest, WorkflowStep
from cancelflow.models.enums import RequestStatus, StepKind
from cancelflow.services import intake, jobs, steps, workflow
from tests.factories import load, order_payload, service_payload

EXPECTED = {
    "submit": 7,
    "validate": 9,
    "route": 11,
    "notify (claim and finish)": 2,
    "accept": 10,
    "loyalty credit": 10,
    "close": 6,
}


@pytest.fixture
def sent(database: str) -> Iterator[list[jobs.Send]]:
    captured: list[jobs.Send] = []
    jobs.set_sender(captured.append)
    yield captured
    from cancelflow.worker.app import install_sender

    install_sender()


def test_statements_per_step_of_one_request(sent: list[jobs.Send]) -> None:
    svc = service_payload(secret=secrets.token_hex(8))
    order = order_payload(service_handle=svc["handle"], quantity=1)
    load({"fulfillment_services": [svc], "orders": [order]})
    counts: Counter[str] = Counter()
    current = [""]

    def count(*_: object) -> None:
        counts[current[0]] += 1

    def step_id(kind: StepKind) -> int:
        send = next(s for s in sent if s.task == steps.TASK_FOR_KIND[kind])
        sent.clear()
        return send.args[0]

    def run(name: str, fn: Callable[[Session], Any]) -> Any:
        current[0] = name
        try:
            with transaction() as session:
                return fn(session)
        finally:
            current[0] = ""

    def claimed(
        handler: Callable[[Session, WorkflowStep], None], kind: StepKind
    ) -> Callable[[Session], None]:
        ident = step_id(kind)
        return lambda session: handler(session, steps.claim(session, ident))

    engine = get_engine(None)
    event.listen(engine, "before_cursor_execute", count)
    try:
        message = {
            "client_request_id": uuid.uuid4().hex,
            "order_item": order["items"][0]["id"],
            "reason": 1,
            "fully_refund_as_loyalty_money": True,
        }
        run("submit", lambda session: intake.submit(session, message))
        run("validate", claimed(workflow.validate_step, StepKind.validate))
        run("route", claimed(workflow.route_step, StepKind.route))
        notify = step_id(StepKind.notify)
        run(
            "notify (claim and finish)",
            lambda session: steps.finish(session, steps.claim(session, notify), {"notified": "test"}),
        )
        current[0] = ""
        with transaction() as session:
            fo_id = session.scalar(select(WorkflowStep.fulfillment_order_id).where(WorkflowStep.id == notify))
        run(
            "accept",
            lambda session: workflow.answer_cancellation(
                session, fo_id, decision="accept", message=None, service_id=None
            ),
        )
        run("loyalty credit", claimed(workflow.money_step, StepKind.loyalty_credit))
        run("close", claimed(workflow.close_step, StepKind.close))
        with transaction() as session:
            status = session.scalar(
                select(CancellationRequest.status).where(
                    CancellationRequest.client_request_id == message["client_request_id"]
                )
            )
            assert status == RequestStatus.completed
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert {name: counts[name] for name in EXPECTED} == EXPECTED
