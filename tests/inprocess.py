"""One cancellation request driven through its steps in-process, as the worker and the API would run them.

No Celery and no HTTP: each step is the service call its task or endpoint makes, on the step the previous one
asked for. Shared by tests/unit/test_round_trips.py (statements per step) and bench/steps.py (CPU and wall
time per step), so both always measure the same path.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from cancelflow.db import transaction
from cancelflow.models import WorkflowStep
from cancelflow.models.enums import StepKind
from cancelflow.services import after_commit, approval, intake, replies, routing, settlement, steps

Step = Callable[[Session], object]


def request_steps(item_id: int, sent: list[after_commit.Send]) -> Iterator[tuple[str, Step]]:
    """(name, work) for each step of one request refunded as loyalty money, in order.

    Run each `work` in its own transaction before asking for the next: a step's id is taken from `sent`, the
    list the installed job sender appends to, after the step that asked for it has committed.
    """

    def asked(kind: StepKind) -> int:
        send = next(s for s in sent if s.task == steps.TASK_FOR_KIND[kind])
        sent.clear()
        return send.args[0]

    def claimed(kind: StepKind, handler: Callable[[Session, WorkflowStep], None]) -> Step:
        step_id = asked(kind)
        return lambda session: handler(session, steps.claim(session, step_id, task=steps.TASK_FOR_KIND[kind]))

    message = {
        "client_request_id": uuid.uuid4().hex,
        "order_item": item_id,
        "reason": 1,
        "fully_refund_as_loyalty_money": True,
    }
    sent.clear()
    yield "submit", lambda session: intake.submit(session, message)
    yield "validate", claimed(StepKind.validate, approval.validate_step)
    yield "route", claimed(StepKind.route, routing.route_step)
    notify_id = asked(StepKind.notify)
    # notify_step's HTTP call is left out: the claim and the finish around it remain
    yield (
        "notify (no HTTP)",
        lambda session: steps.finish(session, steps.claim(session, notify_id, task="fulfillment.notify"), {}),
    )
    with transaction() as session:
        fo_id = session.scalar(select(WorkflowStep.fulfillment_order_id).where(WorkflowStep.id == notify_id))
    assert fo_id is not None
    yield (
        "accept (API)",
        lambda session: replies.answer_cancellation(
            session, fo_id, decision="accept", message=None, service_id=None
        ),
    )
    yield "loyalty credit", claimed(StepKind.loyalty_credit, settlement.money_step)
    yield "close", claimed(StepKind.close, settlement.close_step)
