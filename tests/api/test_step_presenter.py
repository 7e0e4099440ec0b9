"""`cancelflow show` and the detailed request list present the steps of a request the same way: every step
(validation included), no next attempt once a step is finished, no error on a step that succeeded."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from cancelflow.cli.main import app
from cancelflow.db import transaction
from cancelflow.models import WorkflowStep
from cancelflow.models.enums import StepKind, StepStatus
from cancelflow.services import after_commit, approval, replay, routing, steps
from cancelflow.services.steps import TASK_FOR_KIND
from tests.factories import new_request

BASE = "/api/v1/cancellation_requests/"


def step_of(request_id: int, kind: StepKind) -> int:
    with transaction() as session:
        return session.scalars(
            select(WorkflowStep.id).where(WorkflowStep.request_id == request_id, WorkflowStep.kind == kind)
        ).one()


def request_with_a_replayed_step(sent: list[after_commit.Send]) -> int:
    """Validated and approved; its route step died ("gateway exploded"), was replayed, then succeeded."""
    request_id = new_request().id
    with transaction() as session:
        approval.validate_step(
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
        routing.route_step(session, steps.claim(session, route, task=TASK_FOR_KIND[StepKind.route]))
    return request_id


def test_show_and_detailed_present_the_same_steps(
    sent: list[after_commit.Send], client: TestClient, staff: dict[str, str]
) -> None:
    request_id = request_with_a_replayed_step(sent)

    # The detailed list and the detailed request
    listed = client.get(f"{BASE}detailed/", headers=staff, params={"pk": request_id}).json()
    one = client.get(f"{BASE}{request_id}/detailed/", headers=staff).json()
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


def test_a_dead_step_keeps_its_error_and_has_no_next_attempt(sent: list[after_commit.Send]) -> None:
    from cancelflow.services.step_view import steps_of

    request_id = new_request().id
    with transaction() as session:
        steps.record_failure(session, step_of(request_id, StepKind.validate), "boom", permanent=True)
    with transaction() as session:
        [view] = steps_of(session, [request_id])[request_id]
    assert (view.status, view.last_error, view.next_attempt_at) == (StepStatus.dead, "boom", None)
