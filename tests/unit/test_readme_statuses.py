"""The README names fulfillment-order states that exist, and the ones the code really reaches."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from cancelflow.models import FulfillmentOrder
from cancelflow.models.enums import FORequestStatus, FOStatus, PlanStatus
from cancelflow.services import cancellation_requests
from tests.factories import routed_plan, service_payload

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
# Backticked names that start like a request status but are fields and filters, not states.
FIELD_NAMES = {"cancellation_type", "cancellation_plan_status"}
PAIR = re.compile(r"`([a-z_]+)` / `([a-z_]+)`")


def test_every_cancellation_state_the_readme_names_exists() -> None:
    named = set(re.findall(r"`(cancellation_[a-z_]+)`", README)) - FIELD_NAMES
    assert named, "the README names no fulfillment-order state at all"
    assert named <= {s.value for s in FORequestStatus}, named - {s.value for s in FORequestStatus}
    for request_status, status in PAIR.findall(README):
        if request_status in {s.value for s in FORequestStatus}:
            assert status in {s.value for s in FOStatus}, (request_status, status)


def test_the_reject_row_says_what_a_staff_reject_does(session: Session) -> None:
    # Given a fulfillment order its service was asked to cancel
    plan = routed_plan(session, service_payload())
    assert plan.status == PlanStatus.confirmation_waiting

    # When staff reject the request
    cancellation_requests.reject(session, plan.request_id, actor="staff", channel_id=None)
    fo = session.scalars(
        select(FulfillmentOrder).where(FulfillmentOrder.cancellation_plan_id == plan.id)
    ).one()
    session.refresh(fo)

    # Then the README's reject row names the state the fulfillment order is in
    row = next(line for line in README.splitlines() if line.startswith("| `POST` | `/{id}/reject/`"))
    assert PAIR.findall(row) == [(fo.request_status.value, fo.status.value)], row


def test_the_readme_says_a_repeated_answer_is_200_unchanged() -> None:
    text = " ".join(README.split())
    assert "repeating the same accept or reject answers `200` with the fulfillment order unchanged" in text
