"""A step whose message arrives while PostgreSQL refuses connections runs once it is back, in seconds:
the worker re-sends the message instead of leaving the step to the sweeper's redelivery grace."""

from __future__ import annotations

import http.server
import secrets
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import ClassVar

import pytest
from sqlalchemy import func, select, update

from cancelflow.models import WorkflowStep
from cancelflow.models.enums import StepKind
from tests.harness import Stack, clean_workdir, running, wait_for
from tests.workflow.conftest import make_order, make_service, wait_status

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def stack(database: str) -> Iterator[Stack]:
    # A grace far beyond the test: the sweeper leaves alone what the worker's retry must bring back.
    stack = Stack(clean_workdir("stack-test_db_away"), env_overrides={"CANCELFLOW_REDELIVERY_GRACE": "3600"})
    with running(stack):
        yield stack


def _database_connections(allowed: bool) -> None:
    """Let the test database take connections, or refuse new ones and end the open ones."""
    from tests.conftest import TEST_DB, _admin_execute

    _admin_execute(f'ALTER DATABASE "{TEST_DB}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')
    if not allowed:
        where = f"datname = '{TEST_DB}' AND pid <> pg_backend_pid()"  # the run's own name, not input
        _admin_execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {where}")  # noqa: S608


def test_a_step_failing_while_the_database_is_away_runs_when_it_returns(stack: Stack) -> None:
    from cancelflow.db import get_engine, transaction
    from cancelflow.services import intake
    from cancelflow.worker.app import celery_app

    # Given a request whose validate step is due, and whose message was not sent
    service = make_service(stack, policy="accept")
    cid = secrets.token_hex(8)
    with transaction() as session:
        result = intake.submit(
            session,
            {"client_request_id": cid, "order_item": make_order(service)["items"][0]["id"], "reason": 1},
        )
        session.info.pop("cancelflow.pending_sends", None)
        step_id = session.scalars(
            select(WorkflowStep.id).where(
                WorkflowStep.request_id == result.request.id, WorkflowStep.kind == StepKind.validate
            )
        ).one()
        # Due to the sweeper only in an hour: just the worker's own retry can bring the step back in time.
        session.execute(
            update(WorkflowStep)
            .where(WorkflowStep.id == step_id)
            .values(next_attempt_at=func.now() + timedelta(hours=1))
        )
    get_engine().dispose()
    worker = stack.procs["worker"]
    before = len(worker.log_text())
    try:
        # When the database refuses connections and the step's message arrives
        _database_connections(False)
        celery_app.send_task("cancellations.validate", args=[step_id])
        # (the worker tried it and found the database away)
        wait_for(
            lambda: "OperationalError" in worker.log_text()[before:],
            timeout=30,
            what="a failed try of the step",
        )
    finally:
        _database_connections(True)
    # Then the step runs once the database is back (not after the hour-long redelivery grace)
    wait_status(cid, "approved", "completed", timeout=30)
    assert "database is away; retrying the message" in worker.log_text()[before:]


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append(self.headers.get("X-Cancelflow-Event-Id", ""))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        """Quiet: the test reads what was received, not the log."""


def test_a_webhook_delivery_tried_while_the_database_is_away_goes_out_when_it_returns(stack: Stack) -> None:
    from cancelflow.db import get_engine, transaction
    from cancelflow.models import DeliveryStatus, WebhookDelivery
    from cancelflow.services import intake
    from cancelflow.services.webhooks import outbox as webhook_outbox
    from cancelflow.services.webhooks import subscriptions as webhook_subscriptions
    from cancelflow.worker.app import celery_app

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # Given a delivery that is due to the sweeper only in an hour, and whose message was not sent
        service = make_service(stack, policy="never")
        with transaction() as session:
            webhook_subscriptions.create_subscription(
                session, url=f"http://127.0.0.1:{server.server_address[1]}/hook", events=["plan.escalated"]
            )
            request = intake.submit(
                session,
                {
                    "client_request_id": secrets.token_hex(8),
                    "order_item": make_order(service)["items"][0]["id"],
                    "reason": 1,
                },
            ).request
            [delivery] = webhook_outbox.emit(session, "plan.escalated", request.id)
            delivery.next_attempt_at = delivery.next_attempt_at + timedelta(hours=1)
            delivery_id = delivery.id
            session.info.pop("cancelflow.pending_sends", None)
        get_engine().dispose()
        worker = stack.procs["worker"]
        before = len(worker.log_text())
        try:
            # When the database refuses connections and the delivery's message arrives
            _database_connections(False)
            celery_app.send_task("webhooks.deliver", args=[delivery_id])
            wait_for(
                lambda: "OperationalError" in worker.log_text()[before:],
                timeout=30,
                what="a failed try of the delivery",
            )
        finally:
            _database_connections(True)

        # Then it is delivered once the database is back
        def delivered() -> bool:
            with transaction() as session:
                row = session.get(WebhookDelivery, delivery_id)
                return row is not None and row.status == DeliveryStatus.delivered

        wait_for(delivered, timeout=30, what="the delivery delivered")
        assert len(_Receiver.received) == 1
    finally:
        server.shutdown()
        server.server_close()
