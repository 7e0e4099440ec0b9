"""The connect-time guard in the real worker, configured as `make run` configures it.

The worker may reach its sandbox fulfillment service (allowlisted by port) and nothing else on loopback.
A webhook subscription and a fulfillment-service callback URL that point elsewhere on loopback (stored
while that was allowed, or by a name that now resolves there) are refused when the worker connects: the
receiver sees no request, and what is stored says so in a few words.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select, update

from cancelflow.models import FulfillmentService, WebhookAttempt, WebhookDelivery, WorkflowStep
from cancelflow.models.enums import StepKind
from tests.factories import load, next_id
from tests.harness import Stack, clean_workdir, running, wait_for
from tests.workflow.conftest import make_order, make_service, submit, wait_plan, wait_status

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def stack(database: str) -> Iterator[Stack]:
    stack = Stack(clean_workdir("stack-security-ssrf"))
    # What `make run` allows: its sandbox fulfillment service, nothing else.
    stack.env["CANCELFLOW_OUTBOUND_ALLOW"] = f"127.0.0.1:{stack.fulfillment_port}"
    with running(stack):
        yield stack


@pytest.fixture(scope="module")
def internal() -> Iterator[tuple[list[str], int]]:
    """An internal HTTP service on loopback that must never be reached: (requests seen, port)."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # `seen` is the log

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield seen, int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _transaction() -> Any:
    from cancelflow.db import transaction

    return transaction()


def test_webhook_to_loopback_is_refused_by_the_worker(stack: Stack, internal: tuple[list[str], int]) -> None:
    from cancelflow.services.webhooks import subscriptions as webhook_subscriptions

    seen, port = internal
    channel = next_id()
    load({"channels": [{"id": channel, "name": f"SSRF worker {channel}"}]})
    # Given a subscription stored while loopback was allowed (this process allows it; the worker does not)
    with _transaction() as session:
        subscription = webhook_subscriptions.create_subscription(
            session, url=f"http://localhost:{port}/hook", events=["*"], channel_id=channel
        )
        subscription_id = subscription.id
    try:
        # When a request of that channel runs to completion (through the allowlisted sandbox service)
        service = make_service(stack, policy="accept")
        order = make_order(service, channel=channel)
        request = wait_status(submit(order_item=order["items"][0]["id"]), "completed")

        # Then every delivery is dead after one attempt that never connected
        def settled() -> list[WebhookDelivery] | None:
            with _transaction() as session:
                rows = list(
                    session.scalars(
                        select(WebhookDelivery).where(
                            WebhookDelivery.subscription_id == subscription_id,
                            WebhookDelivery.request_id == request.id,
                        )
                    )
                )
            return rows if rows and all(d.status.value == "dead" for d in rows) else None

        deliveries = wait_for(settled, timeout=60, what="deliveries refused")
        assert {(d.attempt, d.last_status_code, d.last_error) for d in deliveries} == {
            (1, None, "destination not allowed")
        }
        with _transaction() as session:
            errors = set(
                session.scalars(
                    select(WebhookAttempt.error).where(
                        WebhookAttempt.delivery_id.in_([d.id for d in deliveries])
                    )
                )
            )
        assert errors == {"destination not allowed"}
        assert seen == []
    finally:
        with _transaction() as session:
            webhook_subscriptions.remove_subscription(session, subscription_id)


def test_callback_url_to_loopback_is_refused_by_the_worker(
    stack: Stack, internal: tuple[list[str], int]
) -> None:
    seen, port = internal
    # Given a fulfillment service whose callback URL now points at an internal port
    service = make_service(stack, policy="accept")
    with _transaction() as session:
        session.execute(
            update(FulfillmentService)
            .where(FulfillmentService.handle == service.handle)
            .values(callback_url=f"http://127.0.0.1:{port}/svc")
        )
    order = make_order(service)
    # When a cancellation must be sent to that service
    request = wait_status(submit(order_item=order["items"][0]["id"]), "approved", "rejected", "completed")
    plan = wait_plan(request.id, "failed")
    # Then the notification step is dead with a plain reason, and nothing reached the internal port
    with _transaction() as session:
        [step] = session.scalars(
            select(WorkflowStep).where(WorkflowStep.plan_id == plan.id, WorkflowStep.kind == StepKind.notify)
        ).all()
    assert step.status.value == "dead"
    assert "destination not allowed" in (step.last_error or "")
    assert str(port) not in (step.last_error or "")
    assert seen == []
