"""Outbound errors stored before they were kept short: the migration drops the remote answers they quote."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime

from sqlalchemy import select

from cancelflow.db import transaction
from cancelflow.models import WorkflowStep
from cancelflow.models.enums import StepKind, StepStatus
from cancelflow.models.webhooks import WebhookAttempt, WebhookDelivery, WebhookSubscription
from tests.api.test_tags import make_requests
from tests.factories import upgrade_once

BODY = "<html>postgres@10.0.0.5 DE89 3704 0044 0532 0130 00\nsecret</html>"

# stored text -> what it becomes
WEBHOOK = {
    f"HTTP 500: {BODY}": "http 500",
    "HTTP 404: ": "http 404",
    "ConnectError: [Errno 111] Connection refused": "unreachable",
    "ReadTimeout: timed out": "unreachable",
    "InvalidURL: Invalid port: 'x'": "invalid url",
    "http 502": "http 502",  # already short: kept
    "destination not allowed": "destination not allowed",
    "subscription removed": "subscription removed",
}
NOTIFY = {
    f"fulfillment notification: HTTP 503 {BODY}": "fulfillment notification: http 503",
    "fulfillment notification: ConnectError: [Errno 111] Connection refused": (
        "fulfillment notification: unreachable"
    ),
    "fulfillment notification: http 500": "fulfillment notification: http 500",
}
GATEWAY = f"refund: HTTP 500 {BODY}"  # an operator's own gateway: its answer stays for the operator


def test_stored_remote_answers_are_rewritten_as_short_reasons(database: str) -> None:
    [request_id] = make_requests(1)
    stamp = datetime.now(UTC)
    with transaction() as session:
        subscription = WebhookSubscription(url="https://hooks.example/in", secret="s", events=["*"])
        session.add(subscription)
        session.flush()
        deliveries: dict[str, WebhookDelivery] = {}
        attempts: dict[str, WebhookAttempt] = {}
        for text in WEBHOOK:
            delivery = WebhookDelivery(
                subscription_id=subscription.id,
                event_type="request.created",
                request_id=request_id,
                next_attempt_at=stamp,
                last_error=text,
            )
            session.add(delivery)
            session.flush()
            attempt = WebhookAttempt(
                delivery_id=delivery.id,
                attempted_at=stamp,
                duration_ms=1,
                error=text,
                outcome="retry",
            )
            session.add(attempt)
            deliveries[text], attempts[text] = delivery, attempt
        step_ids: dict[str, int] = {}
        for text, kind in [*((t, StepKind.notify) for t in NOTIFY), (GATEWAY, StepKind.refund)]:
            step = WorkflowStep(
                request_id=request_id,
                kind=kind,
                status=StepStatus.dead,
                next_attempt_at=stamp,
                idempotency_key=f"scrub-{uuid.uuid4().hex}-{secrets.token_hex(4)}",
                result={},
                last_error=text,
            )
            session.add(step)
            session.flush()
            step_ids[text] = step.id
        session.flush()
        delivery_ids = {text: d.id for text, d in deliveries.items()}
        attempt_ids = {text: a.id for text, a in attempts.items()}

    upgrade_once("20261130_scrub_remote_errors")

    with transaction() as session:
        for text, expected in WEBHOOK.items():
            assert session.get_one(WebhookDelivery, delivery_ids[text]).last_error == expected, text
            assert session.get_one(WebhookAttempt, attempt_ids[text]).error == expected, text
        for text, expected in NOTIFY.items():
            assert session.get_one(WorkflowStep, step_ids[text]).last_error == expected, text
        assert session.get_one(WorkflowStep, step_ids[GATEWAY]).last_error == GATEWAY
        assert BODY not in " ".join(
            str(e)
            for e in session.scalars(select(WebhookAttempt.error).where(WebhookAttempt.error.is_not(None)))
        )
