"""`cancelflow show` and the detailed request list present the steps of a request the same way: every step
(validation included), no next attempt once a step is finished, no error on a step that succeeded."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from cancelflow.api.app import create_app
from cancelflow.cli.main import app
from cancelflow.db import transaction
from cancelflow.models import WorkflowStep
from cancelflow.models.enums import StepKind, StepStatus
from cancelflow.services import intake as intake_service
from cancelflow.services import jobs, replay, steps, workflow
from cancelflow.services.steps import TASK_FOR_KIND
from cancelflow.services.tokens import create_token
from tests.factories import load, order_payload

BASE = "/api/v1/cancellation_requests/"


@pytest.fixture
def sent(database: str) -> Iterator[list[jobs.Send]]:
    captured: list[jobs.Send] = []
    jobs.set_sender(captured.append)
    try:
        yield captured
    finally:
        jobs.set_sender(None)


def step_of(request_id: int, kind: StepKind) -> int:
    with transaction() as session:
        return session.scalars(
            select(WorkflowStep.id).where(WorkflowStep.request_id == request_id, WorkflowStep.kind == kind)
        ).one()


def request_with_a_replayed_step(sent: list[jobs.Send]) -> int:
    """Validated and approved; its route step died ("gateway exploded"), was replayed, then succeeded."""
    order = order_payload(service_handle=None)
    load({"orders": [order]})
    with transaction() as session:
        request_id = intake_service.submit(
            session,
            {"client_request_id": secrets.token_hex(6), "order_item": order["items"][0]["id"], "reason": 1},
        ).request.id
    with transaction() as session:
        workflow.validate_step(
            session,
            steps.claim(
                session, step_of(request_id, StepKind.validate), task=TASK_FOR_KIND[StepKind.validate]
            ),
        )
    route = step_of(request_id, StepKind.route)
    with transaction() as session:
        steps.record_failure(session, route, "RuntimeError: gateway exploded", permanent=True)
    with transaction() as session:
        replay.replay_step(session, route, actor="test")
    with transaction() as session:
        workflow.route_step(session, steps.claim(session, route, task=TASK_FOR_KIND[StepKind.route]))
    return request_id


def test_show_and_detailed_present_the_same_steps(sent: list[jobs.Send]) -> None:
    request_id = request_with_a_replayed_step(sent)
    with transaction() as session:
        _, key = create_token(session, name=f"staff-{uuid.uuid4().hex[:8]}", kind="staff")
    headers = {"Authorization": f"Token {key}"}

    # The detailed list and the detailed request
    with TestClient(create_app()) as client:
        listed = client.get(f"{BASE}detailed/", headers=headers, params={"pk": request_id}).json()
        one = client.get(f"{BASE}{request_id}/detailed/", headers=headers).json()
    api_steps = listed["results"][0]["plan"]["steps"]
    assert one["plan"]["steps"] == api_steps
    kinds = [s["kind"] for s in api_steps]
    assert kinds[:2] == ["validate", "route"], kinds
    by_kind = {s["kind"]: s for s in api_steps}
    for kind in ("validate", "route"):
        assert by_kind[kind]["status"] == "done"
        assert by_kind[kind]["next_attempt_at"] is None
        assert by_kind[kind]["last_error"] is None
    pending = [s for s in api_steps if s["status"] == "pending"]
    assert pending, api_steps  # the next step (money) is due: it has a next attempt
    assert all(s["next_attempt_at"] is not None for s in pending)

    # `cancelflow show`: the same rows
    shown = CliRunner().invoke(app, ["show", str(request_id)])
    assert shown.exit_code == 0, shown.output
    assert "gateway exploded" not in shown.output
    rows = {}
    for line in shown.output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if cells and cells[0].isdigit() and len(cells) >= 4 and cells[1] in {k.value for k in StepKind}:
            rows[int(cells[0])] = cells
    assert list(rows) == [s["id"] for s in api_steps]
    for step in api_steps:
        cells = rows[step["id"]]
        assert cells[1:4] == [step["kind"], step["status"], str(step["attempt"])]
        has_next_attempt = any(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", c) for c in cells[4:])
        assert has_next_attempt == (step["next_attempt_at"] is not None), cells


def test_a_dead_step_keeps_its_error_and_has_no_next_attempt(sent: list[jobs.Send]) -> None:
    from cancelflow.services.step_view import steps_of

    order = order_payload(service_handle=None)
    load({"orders": [order]})
    with transaction() as session:
        request_id = intake_service.submit(
            session,
            {"client_request_id": secrets.token_hex(6), "order_item": order["items"][0]["id"], "reason": 1},
        ).request.id
    with transaction() as session:
        steps.record_failure(session, step_of(request_id, StepKind.validate), "boom", permanent=True)
    with transaction() as session:
        [view] = steps_of(session, [request_id])[request_id]
    assert (view.status, view.last_error, view.next_attempt_at) == (StepStatus.dead, "boom", None)
