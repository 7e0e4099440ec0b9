"""The console's escalations and dead-deliveries queues without a browser: what they list, and that each
button does what the CLI's `escalations resolve` and the API's `redeliver/` do, behind the session and the
CSRF check."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cancelflow.api.app import create_app
from cancelflow.db import transaction
from cancelflow.models import CancellationPlan, CancellationRequest, Event, FulfillmentOrder, User
from cancelflow.models.enums import FOStatus, PlanStatus
from cancelflow.models.webhooks import DeliveryStatus, WebhookDelivery
from cancelflow.services import approval, escalation
from cancelflow.services.after_commit import Send
from cancelflow.services.clock import now
from cancelflow.services.webhooks import delivery as webhook_delivery
from cancelflow.services.webhooks import subscriptions as webhook_subscriptions
from tests.conftest import restored_logging
from tests.console.support import csrf_of, sign_in, staff_user
from tests.factories import new_request, routed_plan, service_payload


@pytest.fixture(scope="module")
def console(database: str) -> Iterator[TestClient]:
    with restored_logging(), TestClient(create_app()) as client:
        assert sign_in(client, staff_user()).status_code == 303
        yield client


def _post(client: TestClient, path: str, **fields: str) -> httpx.Response:
    token = csrf_of(client.get("/console/requests"))
    return client.post(path, data={"csrf_token": token, **fields}, follow_redirects=False)


# --- escalations --------------------------------------------------------------------------------------


def _escalated() -> tuple[int, int, str]:
    """A committed plan escalated at its reply deadline by the chase: (request id, plan id, service)."""
    service = service_payload(handle=f"svc-{uuid.uuid4().hex[:8]}")
    with transaction() as session:
        plan = routed_plan(session, service)
        result = escalation.ChaseResult()
        escalation._chase_plan(session, plan.id, now() + timedelta(hours=2), result)
        assert result.escalated == 1
        return plan.request_id, plan.id, service["handle"]


def _plan(plan_id: int) -> CancellationPlan:
    with transaction() as session:
        plan = session.get_one(CancellationPlan, plan_id)
        session.expunge(plan)
        return plan


def test_escalations_are_listed_with_their_service_and_deadline(
    console: TestClient, sent: list[Send]
) -> None:
    request_id, plan_id, handle = _escalated()
    page = console.get("/console/escalations")
    assert page.status_code == 200
    row = re.search(rf'<tr>\s*<td><a href="/console/requests/{request_id}">.*?</tr>', page.text, re.S)
    assert row is not None, page.text
    assert handle in row[0]
    deadline = _plan(plan_id).deadline_at
    assert deadline is not None
    assert deadline.strftime("%Y-%m-%d %H:%M:%S") in row[0]
    for text in ("Cancel locally", "Reject", "Wait"):
        assert f'aria-label="{text}: request {request_id}"' in row[0]
    assert 'aria-current="page">Escalations<' in page.text


def test_cancel_locally_as_the_cli_does(console: TestClient, sent: list[Send]) -> None:
    request_id, plan_id, _ = _escalated()
    answer = _post(console, f"/console/escalations/{request_id}/resolve", action="cancel_locally")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/escalations"
    assert _plan(plan_id).status == PlanStatus.waiting_for_payment
    with transaction() as session:
        fos = session.scalars(
            select(FulfillmentOrder.status).where(FulfillmentOrder.cancellation_plan_id == plan_id)
        ).all()
        assert set(fos) == {FOStatus.cancelled}
        [resolved] = session.scalars(
            select(Event).where(
                Event.entity == "plan", Event.entity_id == plan_id, Event.kind == "plan.escalation_resolved"
            )
        ).all()
        assert resolved.data["action"] == "cancel_locally"
        assert re.fullmatch(r"staff \(user:\d+\)", str(resolved.data["actor"]))
    assert f'aria-label="Reject: request {request_id}"' not in console.get("/console/escalations").text
    # Resolved once: a second decision is the service's refusal, shown on the page.
    again = _post(console, f"/console/escalations/{request_id}/resolve", action="reject")
    assert again.status_code == 409
    assert 'role="alert"' in again.text
    assert "is not escalated" in again.text
    assert _plan(plan_id).status == PlanStatus.waiting_for_payment


def test_reject_as_the_cli_does(console: TestClient, sent: list[Send]) -> None:
    request_id, plan_id, _ = _escalated()
    assert _post(console, f"/console/escalations/{request_id}/resolve", action="reject").status_code == 303
    assert _plan(plan_id).status == PlanStatus.rejected
    with transaction() as session:
        assert session.get_one(CancellationRequest, request_id).rejection_code == "staff_rejected"


def test_wait_gives_one_more_deadline(console: TestClient, sent: list[Send]) -> None:
    request_id, plan_id, _ = _escalated()
    before = _plan(plan_id).deadline_at
    assert before is not None
    assert _post(console, f"/console/escalations/{request_id}/resolve", action="wait").status_code == 303
    plan = _plan(plan_id)
    assert (plan.status, plan.escalated_at) == (PlanStatus.confirmation_waiting, None)
    assert plan.deadline_at is not None
    assert plan.deadline_at > before
    assert f'aria-label="Wait: request {request_id}"' not in console.get("/console/escalations").text


def test_a_bad_decision_or_no_csrf_changes_nothing(console: TestClient, sent: list[Send]) -> None:
    request_id, plan_id, _ = _escalated()
    shrug = _post(console, f"/console/escalations/{request_id}/resolve", action="shrug")
    assert shrug.status_code == 400
    assert "action must be one of" in shrug.text
    forged = console.post(
        f"/console/escalations/{request_id}/resolve", data={"action": "reject"}, follow_redirects=False
    )
    assert forged.status_code == 403
    assert _post(console, "/console/escalations/999999999/resolve", action="wait").status_code == 404
    plan = _plan(plan_id)
    assert plan.status == PlanStatus.confirmation_waiting
    assert plan.escalated_at is not None


# --- dead webhook deliveries --------------------------------------------------------------------------


def _dead_delivery() -> tuple[int, int]:
    """A committed delivery its receiver refused for good (a 404): (delivery id, subscription id)."""
    with transaction() as session:
        request = new_request(session=session)
        subscription = webhook_subscriptions.create_subscription(
            session, url="http://127.0.0.1:9/hook", events=["request.approved"]
        )
        approval.approve(session, request, actor="test")
        delivery = session.scalars(
            select(WebhookDelivery).where(
                WebhookDelivery.subscription_id == subscription.id, WebhookDelivery.request_id == request.id
            )
        ).one()
        delivery_id, subscription_id = delivery.id, subscription.id
    _refuse(delivery_id)
    return delivery_id, subscription_id


def _refuse(delivery_id: int) -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(404, text="gone")))
    with transaction() as session:
        assert webhook_delivery.deliver(session, delivery_id, client=client) == "dead"


def _delivery(delivery_id: int) -> tuple[DeliveryStatus, int]:
    with transaction() as session:
        delivery = session.get_one(WebhookDelivery, delivery_id)
        return delivery.status, delivery.attempt


def test_dead_deliveries_are_listed_and_redelivered(console: TestClient, sent: list[Send]) -> None:
    delivery_id, subscription_id = _dead_delivery()
    page = console.get("/console/deliveries")
    assert page.status_code == 200
    row = re.search(rf"<tr>\s*<td>{delivery_id}</td>.*?</tr>", page.text, re.S)
    assert row is not None, page.text
    assert "request.approved" in row[0]
    assert "<td>404</td>" in row[0]
    assert f'aria-label="Redeliver delivery {delivery_id}"' in row[0]
    answer = _post(console, f"/console/deliveries/{delivery_id}/redeliver")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/deliveries"
    assert _delivery(delivery_id) == (DeliveryStatus.pending, 0)
    assert any(delivery_id in s.args for s in sent)  # a new attempt was asked for, as through the API
    assert f'aria-label="Redeliver delivery {delivery_id}"' not in console.get("/console/deliveries").text
    # Dead again, then its subscription removed: the service's refusal is shown and nothing changes.
    _refuse(delivery_id)
    with transaction() as session:
        webhook_subscriptions.remove_subscription(session, subscription_id)
    refused = _post(console, f"/console/deliveries/{delivery_id}/redeliver")
    assert refused.status_code == 400
    assert 'role="alert"' in refused.text
    assert f"Subscription {subscription_id} is not active." in refused.text
    assert _delivery(delivery_id)[0] == DeliveryStatus.dead
    assert _post(console, "/console/deliveries/999999999/redeliver").status_code == 404


def test_redeliver_needs_the_csrf_token(console: TestClient, sent: list[Send]) -> None:
    delivery_id, subscription_id = _dead_delivery()
    answer = console.post(f"/console/deliveries/{delivery_id}/redeliver", follow_redirects=False)
    assert answer.status_code == 403
    assert _delivery(delivery_id)[0] == DeliveryStatus.dead
    with transaction() as session:
        webhook_subscriptions.remove_subscription(session, subscription_id)


# --- access -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/console/escalations"),
        ("GET", "/console/deliveries"),
        ("POST", "/console/escalations/1/resolve"),
        ("POST", "/console/deliveries/1/redeliver"),
    ],
)
def test_without_a_staff_session_the_queues_send_to_sign_in(database: str, method: str, path: str) -> None:
    with restored_logging(), TestClient(create_app()) as client:
        anonymous = client.request(method, path, follow_redirects=False)
        assert anonymous.status_code == 303
        assert anonymous.headers["location"].startswith("/console/login?next=")
        username = staff_user()
        assert sign_in(client, username).status_code == 303
        assert client.get("/console/escalations").status_code == 200
        # No longer staff: the session gives no access any more.
        with transaction() as session:
            user = session.scalars(select(User).where(User.username == username)).one()
            user.is_staff = False
        demoted = client.request(method, path, follow_redirects=False)
        assert demoted.status_code == 303
        assert demoted.headers["location"].startswith("/console/login?next=")
