"""A step whose first message cannot be published after its commit (the broker is away) is due for the
sweeper at once, not after the redelivery grace."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from cancelflow.db import transaction
from cancelflow.errors import TransientError
from cancelflow.models import WorkflowStep
from cancelflow.models.enums import StepKind
from cancelflow.services import after_commit, steps
from cancelflow.services import recovery as _recovery  # noqa: F401  (registers the failure hook)
from cancelflow.services.clock import now


@pytest.fixture(
    params=[
        # What `worker.app.send` raises for a broker that does not answer.
        TransientError("the broker does not answer: Connection refused", code="broker_unavailable"),
        ConnectionRefusedError("broker is away"),  # anything else a sender may raise
    ],
    ids=["broker_unavailable", "unexpected"],
)
def broker_away(request: pytest.FixtureRequest) -> Iterator[list[after_commit.Send]]:
    tried: list[after_commit.Send] = []
    error: Exception = request.param

    def refuse(send: after_commit.Send) -> None:
        tried.append(send)
        raise error

    previous = after_commit._sender
    after_commit.set_sender(refuse)
    yield tried
    after_commit.set_sender(previous)


def _create_step() -> int:
    with transaction() as session:
        return steps.create(
            session, request_id=None, kind=StepKind.validate, idempotency_key=f"unsent-{uuid.uuid4().hex}"
        )


def test_a_step_not_sent_after_commit_is_due_at_once(
    database: str, broker_away: list[after_commit.Send]
) -> None:
    step_id = _create_step()

    assert [send.args for send in broker_away] == [(step_id,)]
    with transaction() as session:
        step = session.scalars(select(WorkflowStep).where(WorkflowStep.id == step_id)).one()
    # Without the hook it would wait the redelivery grace (next_attempt_at = created + grace).
    assert step.next_attempt_at <= now()
