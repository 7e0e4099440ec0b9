"""Outbound webhooks, in-process against the real database: the outbox, matching, payloads, signing,
per-request ordering, retry classification, redelivery and the sweep. HTTP goes to an httpx mock."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from cancelflow.errors import Invalid, NotFound
from cancelflow.integrations import webhooks as webhook_http
from cancelflow.models import (
    CancellationRequest,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSubscription,
)
from cancelflow.models.enums import PlanStatus
from cancelflow.services import approval, transitions
from cancelflow.services.after_commit import pending_sends
from cancelflow.services.clock import now
from cancelflow.services.webhooks import delivery as webhook_delivery
from cancelflow.services.webhooks import outbox as webhook_outbox
from cancelflow.services.webhooks import subscriptions as webhook_subscriptions
from tests.factories import VALID_IBAN, new_order, new_request

Handler = Callable[[httpx.Request], httpx.Response]


def _request(session: Session, **kwargs: Any) -> CancellationRequest:
    submit_extra = {k: kwargs.pop(k) for k in ("iban", "holder_name") if k in kwargs}
    return new_request(new_order(session=session, **kwargs), session=session, **submit_extra)


def _subscribe(session: Session, *events: str, channel: int | None = None) -> WebhookSubscription:
    return webhook_subscriptions.create_subscription(
        session, url="http://127.0.0.1:9/hook", events=list(events), channel_id=channel
    )


def _deliveries(session: Session, subscription: WebhookSubscription) -> list[WebhookDelivery]:
    return list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.subscription_id == subscription.id)
            .order_by(WebhookDelivery.id)
        )
    )


def _client(handler: Handler) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def _answer(code: int, calls: list[httpx.Request] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if calls is not None:
            calls.append(request)
        return httpx.Response(code, text="ok" if code < 300 else "nope")

    return handler


def _deliver_sends(session: Session) -> list[tuple[int, ...]]:
    return [s.args for s in pending_sends(session) if s.task == "webhooks.deliver"]


class TestSubscriptions:
    def test_create_validates_events_url_and_channel(self, session: Session) -> None:
        with pytest.raises(Invalid) as info:
            webhook_subscriptions.create_subscription(
                session, url="http://x.test/h", events=["request.exploded"]
            )
        assert "events" in info.value.field_errors
        with pytest.raises(Invalid) as info:
            webhook_subscriptions.create_subscription(session, url="ftp://x.test/h", events=["*"])
        assert "url" in info.value.field_errors
        with pytest.raises(Invalid) as info:
            webhook_subscriptions.create_subscription(
                session, url="http://x.test/h", events=["*"], channel_id=987654
            )
        assert "channel" in info.value.field_errors

    def test_secrets_differ_and_remove_deactivates(self, session: Session) -> None:
        a = _subscribe(session, "*")
        b = _subscribe(session, "*")
        assert a.secret != b.secret
        assert a.secret.startswith("whsec_")
        webhook_subscriptions.remove_subscription(session, a.id)
        assert a.id not in [s.id for s in webhook_subscriptions.list_subscriptions(session)]
        with pytest.raises(NotFound):
            webhook_subscriptions.remove_subscription(session, a.id)


class TestOutbox:
    def test_transition_writes_one_delivery_per_matching_subscription(self, session: Session) -> None:
        # Given subscriptions by event type, by channel, and one inactive
        request = _request(session, channel=1)
        wants_approved = _subscribe(session, "request.approved")
        everything_on_channel_1 = _subscribe(session, "*", channel=1)
        other_channel = _subscribe(session, "*", channel=2)
        other_event = _subscribe(session, "plan.failed")
        inactive = _subscribe(session, "*")
        webhook_subscriptions.remove_subscription(session, inactive.id)

        # When the request is approved
        approval.approve(session, request, actor="test")

        # Then exactly the matching subscriptions got a row, sharing one event id, each asked for
        [approved] = _deliveries(session, wants_approved)
        assert (approved.event_type, approved.request_id, approved.status) == (
            "request.approved",
            request.id,
            DeliveryStatus.pending,
        )
        on_channel = _deliveries(session, everything_on_channel_1)
        assert [d.event_type for d in on_channel] == ["request.approved"]
        assert on_channel[0].event_id == approved.event_id
        assert _deliveries(session, other_channel) == []
        assert _deliveries(session, other_event) == []
        assert _deliveries(session, inactive) == []
        assert {(approved.id,), (on_channel[0].id,)} <= set(_deliver_sends(session))

    def test_plan_transitions_carry_request_and_plan(self, session: Session) -> None:
        request = _request(session, quantity=2, unit_price="12.50", currency="eur")
        subscription = _subscribe(session, "plan.confirmed")
        plan = approval.approve(session, request, actor="test")
        transitions.move(session, plan, PlanStatus.confirmed)
        [delivery] = _deliveries(session, subscription)
        data = delivery.payload["data"]
        assert isinstance(data, dict)
        assert data["plan"] == {
            "id": plan.id,
            "status": "confirmed",
            "amount": "25.00",
            "currency": "eur",
            "refund_target": "original_payment",
        }
        assert data["request"]["id"] == request.id
        assert data["request"]["status"] == "approved"
        assert delivery.payload["type"] == "plan.confirmed"
        assert delivery.payload["id"] == str(delivery.event_id)

    def test_no_subscription_means_no_row_and_no_send(self, session: Session) -> None:
        request = _request(session)
        before = session.scalar(text("SELECT count(*) FROM webhook_deliveries"))
        approval.approve(session, request, actor="test")
        assert session.scalar(text("SELECT count(*) FROM webhook_deliveries")) == before
        assert _deliver_sends(session) == []

    def test_payload_has_no_personal_data(self, session: Session) -> None:
        request = _request(
            session,
            method="cash_on_delivery",
            email="alice.private@example.com",
            iban=VALID_IBAN,
            holder_name="Alice Secretname",
        )
        assert request.iban == VALID_IBAN  # the request does hold it…
        subscription = _subscribe(session, "*")
        approval.approve(session, request, actor="test")
        [delivery] = _deliveries(session, subscription)
        body = webhook_http.encode(delivery.payload).decode()
        # …the payload does not
        for secret in (VALID_IBAN, "Alice", "Secretname", "alice.private", "Bob", "Norman", "iban", "holder"):
            assert secret.lower() not in body.lower(), secret
        assert set(json.loads(body)["data"]["request"]) == {
            "id",
            "uuid",
            "status",
            "order_item",
            "quantity",
            "cancellation_type",
            "client_request_id",
        }

    def test_emit_adds_extra_data_and_refuses_unknown_types(self, session: Session) -> None:
        request = _request(session)
        subscription = _subscribe(session, "plan.escalated")
        approval.approve(session, request, actor="test")
        webhook_outbox.emit(session, "plan.escalated", request.id, {"deadline_action": "escalate"})
        [delivery] = _deliveries(session, subscription)
        assert delivery.payload["data"]["deadline_action"] == "escalate"  # type: ignore[index]
        assert delivery.payload["data"]["plan"]["status"] == "waiting"  # type: ignore[index]
        with pytest.raises(ValueError, match="unknown webhook event type"):
            webhook_outbox.emit(session, "plan.exploded", request.id)

    def test_a_rolled_back_change_leaves_no_delivery(self, session: Session) -> None:
        request = _request(session)
        subscription = _subscribe(session, "request.approved")
        savepoint = session.begin_nested()
        approval.approve(session, request, actor="test")
        assert len(_deliveries(session, subscription)) == 1
        savepoint.rollback()
        assert _deliveries(session, subscription) == []

    def test_subscription_lookup_uses_the_gin_index(self, session: Session) -> None:
        session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = session.execute(
            text(
                "EXPLAIN SELECT id FROM webhook_subscriptions "
                "WHERE is_active AND events ?| array['request.completed', '*']"
            )
        ).scalars()
        assert "ix_webhook_subscriptions_active_events" in "\n".join(plan)


class TestSignature:
    def test_round_trip(self) -> None:
        body = b'{"id":"e1","type":"request.completed"}'
        ts = int(time.time())
        header = webhook_http.sign("whsec_abc", ts, body)
        assert header.startswith(f"t={ts},v1=")
        assert webhook_http.verify_signature("whsec_abc", header, body)

    @pytest.mark.parametrize(
        ("secret", "body", "age"),
        [
            ("whsec_other", b'{"id":"e1"}', 0),  # wrong secret
            ("whsec_abc", b'{"id":"e2"}', 0),  # tampered body
            ("whsec_abc", b'{"id":"e1"}', 3600),  # replayed an hour later
        ],
    )
    def test_rejects_wrong_secret_tampering_and_replay(self, secret: str, body: bytes, age: int) -> None:
        ts = int(time.time()) - age
        header = webhook_http.sign("whsec_abc", ts, b'{"id":"e1"}')
        assert not webhook_http.verify_signature(secret, header, body)

    def test_rejects_garbage_header(self) -> None:
        assert not webhook_http.verify_signature("s", "v1=abc", b"{}")
        assert not webhook_http.verify_signature("s", "t=notanumber,v1=abc", b"{}")

    def test_delivery_is_signed_over_the_raw_body(self, session: Session) -> None:
        request = _request(session)
        subscription = _subscribe(session, "request.approved")
        approval.approve(session, request, actor="test")
        [delivery] = _deliveries(session, subscription)
        calls: list[httpx.Request] = []
        assert (
            webhook_delivery.deliver(session, delivery.id, client=_client(_answer(204, calls))) == "delivered"
        )
        [sent] = calls
        assert sent.headers["X-Cancelflow-Event-Id"] == str(delivery.event_id)
        assert sent.headers["X-Cancelflow-Event-Type"] == "request.approved"
        assert sent.headers["X-Cancelflow-Signature"].startswith(
            f"t={sent.headers['X-Cancelflow-Timestamp']},v1="
        )
        assert webhook_http.verify_signature(
            subscription.secret, sent.headers["X-Cancelflow-Signature"], sent.content
        )
        assert json.loads(sent.content)["id"] == str(delivery.event_id)


class TestDelivery:
    def _one(self, session: Session) -> WebhookDelivery:
        request = _request(session)
        subscription = _subscribe(session, "request.approved")
        approval.approve(session, request, actor="test")
        [delivery] = _deliveries(session, subscription)
        return delivery

    def _attempts(self, session: Session, delivery: WebhookDelivery) -> list[WebhookAttempt]:
        return webhook_delivery.list_attempts(session, delivery.id)

    def test_server_error_is_retried_with_backoff_and_recorded(
        self, session: Session, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from cancelflow.config import get_settings

        monkeypatch.setattr(get_settings(), "retry_backoff_base", timedelta(seconds=30))
        monkeypatch.setattr(get_settings(), "retry_backoff_max", timedelta(minutes=5))
        delivery = self._one(session)
        before = now()
        assert webhook_delivery.deliver(session, delivery.id, client=_client(_answer(503))) == "retry"
        assert delivery.status == DeliveryStatus.failed
        assert delivery.attempt == 1
        assert delivery.last_status_code == 503
        assert delivery.next_attempt_at >= before + timedelta(seconds=15)  # equal jitter: at least half
        [attempt] = self._attempts(session, delivery)
        assert (attempt.status_code, attempt.outcome.value) == (503, "retry")
        assert attempt.duration_ms >= 0
        assert "503" in (attempt.error or "")
        # a duplicate message before the backoff elapsed makes no attempt
        assert webhook_delivery.deliver(session, delivery.id, client=_client(_answer(200))) == "not_due"
        assert len(self._attempts(session, delivery)) == 1

    def test_a_retry_after_from_the_receiver_is_waited_out(self, session: Session) -> None:
        delivery = self._one(session)
        before = now()

        def slow_down(request: httpx.Request) -> httpx.Response:
            return httpx.Response(429, headers={"Retry-After": "120"})

        assert webhook_delivery.deliver(session, delivery.id, client=_client(slow_down)) == "retry"
        assert delivery.next_attempt_at >= before + timedelta(seconds=120)  # backoff alone caps at 2 s here

    @pytest.mark.parametrize(
        ("code", "outcome"), [(410, "dead"), (400, "dead"), (408, "retry"), (429, "retry")]
    )
    def test_client_errors_die_except_408_and_429(self, session: Session, code: int, outcome: str) -> None:
        delivery = self._one(session)
        assert webhook_delivery.deliver(session, delivery.id, client=_client(_answer(code))) == outcome
        assert delivery.status == (DeliveryStatus.dead if outcome == "dead" else DeliveryStatus.failed)

    def test_connection_error_is_a_failed_attempt_without_a_code(self, session: Session) -> None:
        delivery = self._one(session)

        def refuse(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused", request=request)

        assert webhook_delivery.deliver(session, delivery.id, client=_client(refuse)) == "retry"
        [attempt] = self._attempts(session, delivery)
        assert attempt.status_code is None
        assert attempt.error == "unreachable"  # the same reason whatever the port did

    def test_attempts_run_out_then_dead(self, session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
        from cancelflow.config import get_settings

        monkeypatch.setattr(get_settings(), "step_max_attempts", 3)
        delivery = self._one(session)
        outcomes = []
        for _ in range(3):
            delivery.next_attempt_at = now() - timedelta(seconds=1)
            outcomes.append(webhook_delivery.deliver(session, delivery.id, client=_client(_answer(500))))
        assert outcomes == ["retry", "retry", "dead"]
        assert delivery.status == DeliveryStatus.dead
        assert webhook_delivery.deliver(session, delivery.id, client=_client(_answer(200))) == "already_dead"
        assert len(self._attempts(session, delivery)) == 3

    def test_removed_subscription_stops_its_deliveries(self, session: Session) -> None:
        delivery = self._one(session)
        webhook_subscriptions.remove_subscription(session, delivery.subscription_id)
        calls: list[httpx.Request] = []
        assert webhook_delivery.deliver(session, delivery.id, client=_client(_answer(200, calls))) == "dead"
        assert calls == []

    def test_redeliver_starts_a_new_cycle_with_the_same_event_id(self, session: Session) -> None:
        delivery = self._one(session)
        webhook_delivery.deliver(session, delivery.id, client=_client(_answer(410)))
        event_id = delivery.event_id
        webhook_delivery.redeliver(session, delivery.id)
        assert (delivery.status, delivery.attempt, delivery.event_id) == (DeliveryStatus.pending, 0, event_id)
        assert (delivery.id,) in _deliver_sends(session)
        calls: list[httpx.Request] = []
        assert (
            webhook_delivery.deliver(session, delivery.id, client=_client(_answer(200, calls))) == "delivered"
        )
        assert calls[0].headers["X-Cancelflow-Event-Id"] == str(event_id)
        assert [a.outcome.value for a in self._attempts(session, delivery)] == ["dead", "delivered"]
        with pytest.raises(NotFound):
            webhook_delivery.redeliver(session, 2**62)

    def test_a_finished_delivery_shows_no_next_attempt(self, session: Session) -> None:
        from cancelflow.api.webhooks import _delivery

        # Given a delivery that died, was redelivered (a timer ahead) and then got through
        delivery = self._one(session)
        webhook_delivery.deliver(session, delivery.id, client=_client(_answer(410)))
        assert _delivery(delivery).next_attempt_at is None  # dead: nothing follows
        webhook_delivery.redeliver(session, delivery.id)
        assert delivery.next_attempt_at > now()
        assert _delivery(delivery).next_attempt_at == delivery.next_attempt_at  # pending: its timer
        webhook_delivery.deliver(session, delivery.id, client=_client(_answer(200)))
        assert delivery.status == DeliveryStatus.delivered
        # Then neither the API nor the CLI presents the old timer as a next attempt
        assert _delivery(delivery).next_attempt_at is None
        assert webhook_delivery.next_attempt(delivery) is None

    def test_sweep_resends_due_retries_and_leaves_others(self, session: Session) -> None:
        due = self._one(session)
        later = self._one(session)
        for delivery in (due, later):
            webhook_delivery.deliver(session, delivery.id, client=_client(_answer(500)))
        due.next_attempt_at = now() - timedelta(seconds=1)
        later.next_attempt_at = now() + timedelta(hours=1)
        session.flush()
        session.info.pop("cancelflow.pending_sends", None)
        assert webhook_delivery.sweep_due(session) >= 1
        sent = _deliver_sends(session)
        assert (due.id,) in sent
        assert (later.id,) not in sent
        session.refresh(due)
        assert due.status == DeliveryStatus.pending  # a message is on its way: not an early duplicate
        assert webhook_delivery.deliver(session, due.id, client=_client(_answer(200))) == "delivered"


class TestOrdering:
    def test_younger_delivery_waits_for_the_older_one_of_the_same_request(self, session: Session) -> None:
        # Given two events of one request for one subscription
        request = _request(session)
        subscription = _subscribe(session, "*")
        plan = approval.approve(session, request, actor="test")
        transitions.move(session, plan, PlanStatus.confirmed)
        first, second = _deliveries(session, subscription)
        assert (first.event_type, second.event_type) == ("request.approved", "plan.confirmed")
        # And an unrelated request's delivery, which must not wait for them
        other = _request(session)
        approval.approve(session, other, actor="test")
        [other_delivery] = [d for d in _deliveries(session, subscription) if d.request_id == other.id]

        # When the younger one is tried first, nothing is sent and no attempt is counted
        calls: list[httpx.Request] = []
        client = _client(_answer(200, calls))
        assert webhook_delivery.deliver(session, second.id, client=client) == "waiting_for_older"
        assert (calls, second.attempt, second.status) == ([], 0, DeliveryStatus.pending)
        assert webhook_delivery.deliver(session, other_delivery.id, client=client) == "delivered"

        # When the older one fails, the younger one still waits
        assert webhook_delivery.deliver(session, first.id, client=_client(_answer(500))) == "retry"
        assert webhook_delivery.deliver(session, second.id, client=client) == "waiting_for_older"
        assert second.next_attempt_at > first.next_attempt_at

        # Then once the older one is delivered it nudges the younger, which goes out after it
        first.next_attempt_at = now() - timedelta(seconds=1)
        session.info.pop("cancelflow.pending_sends", None)
        assert webhook_delivery.deliver(session, first.id, client=client) == "delivered"
        assert (second.id,) in _deliver_sends(session)
        assert webhook_delivery.deliver(session, second.id, client=client) == "delivered"
        assert [c.headers["X-Cancelflow-Event-Type"] for c in calls] == [
            "request.approved",
            "request.approved",
            "plan.confirmed",
        ]

    def test_a_dead_older_delivery_does_not_block(self, session: Session) -> None:
        request = _request(session)
        subscription = _subscribe(session, "*")
        plan = approval.approve(session, request, actor="test")
        transitions.move(session, plan, PlanStatus.confirmed)
        first, second = _deliveries(session, subscription)
        assert webhook_delivery.deliver(session, first.id, client=_client(_answer(404))) == "dead"
        assert webhook_delivery.deliver(session, second.id, client=_client(_answer(200))) == "delivered"
