"""A receiver that is slow or dead costs database timers, not broker messages, and a subscription that
keeps failing is paused until staff resume it. In-process against the real database; HTTP is mocked."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from cancelflow.models import DeliveryStatus, Event, WebhookDelivery, WebhookSubscription
from cancelflow.models.enums import PlanStatus
from cancelflow.services import approval, metrics, transitions
from cancelflow.services.clock import now
from cancelflow.services.webhooks import delivery as webhook_delivery
from cancelflow.services.webhooks import subscriptions as webhook_subscriptions
from tests.unit.test_webhooks import _answer, _client, _deliver_sends, _deliveries, _request, _subscribe


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused", request=request)


def _two_of_one_request(session: Session) -> tuple[WebhookSubscription, WebhookDelivery, WebhookDelivery]:
    request = _request(session)
    subscription = _subscribe(session, "*")
    plan = approval.approve(session, request, actor="test")
    transitions.move(session, plan, PlanStatus.confirmed)
    first, second = _deliveries(session, subscription)
    return subscription, first, second


def _clear_sends(session: Session) -> None:
    session.info.pop("cancelflow.pending_sends", None)


class TestWaitingIsADatabaseTimer:
    def test_a_failed_attempt_publishes_nothing_and_the_sweep_sends_it_when_due(
        self, session: Session
    ) -> None:
        _subscription, first, _ = _two_of_one_request(session)
        _clear_sends(session)
        assert webhook_delivery.deliver(session, first.id, client=_client(_refuse)) == "retry"
        # The backoff is the row's next_attempt_at, not a message with a countdown.
        assert _deliver_sends(session) == []
        assert first.status == DeliveryStatus.failed
        assert first.next_attempt_at > now()
        first.next_attempt_at = now() - timedelta(seconds=1)
        session.flush()
        assert webhook_delivery.sweep_due(session) >= 1
        assert (first.id,) in _deliver_sends(session)

    def test_a_delivery_behind_an_older_one_publishes_nothing(self, session: Session) -> None:
        _, first, second = _two_of_one_request(session)
        _clear_sends(session)
        assert webhook_delivery.deliver(session, first.id, client=_client(_answer(500))) == "retry"
        for _ in range(3):  # however often it is looked at, waiting never re-queues it
            assert (
                webhook_delivery.deliver(session, second.id, client=_client(_answer(200)))
                == "waiting_for_older"
            )
        assert _deliver_sends(session) == []

    def test_the_sweep_sends_only_the_oldest_unfinished_delivery_of_a_request(self, session: Session) -> None:
        _, first, second = _two_of_one_request(session)
        assert webhook_delivery.deliver(session, first.id, client=_client(_answer(500))) == "retry"
        for delivery in (first, second):
            delivery.next_attempt_at = now() - timedelta(seconds=1)
        session.flush()
        _clear_sends(session)
        webhook_delivery.sweep_due(session)
        sent = _deliver_sends(session)
        assert (first.id,) in sent
        assert (second.id,) not in sent  # it waits for the older one's nudge, not for a sweep loop


class TestPause:
    @pytest.fixture(autouse=True)
    def _pause_after_three(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from cancelflow.config import get_settings

        monkeypatch.setattr(get_settings(), "webhook_pause_after", 3)
        monkeypatch.setattr(get_settings(), "step_max_attempts", 50)

    def _fail(self, session: Session, delivery: WebhookDelivery, times: int) -> None:
        for _ in range(times):
            delivery.next_attempt_at = now() - timedelta(seconds=1)
            assert webhook_delivery.deliver(session, delivery.id, client=_client(_refuse)) == "retry"

    def test_a_success_in_between_resets_the_count(self, session: Session) -> None:
        subscription, first, second = _two_of_one_request(session)
        self._fail(session, first, 2)
        first.next_attempt_at = now() - timedelta(seconds=1)
        assert webhook_delivery.deliver(session, first.id, client=_client(_answer(200))) == "delivered"
        session.refresh(subscription)
        assert (subscription.consecutive_failures, subscription.paused_at) == (0, None)
        self._fail(session, second, 2)
        session.refresh(subscription)
        assert (subscription.consecutive_failures, subscription.paused_at) == (2, None)

    def test_paused_after_the_limit_then_nothing_is_tried_until_resumed(self, session: Session) -> None:
        # Given a receiver that refuses connections
        subscription, first, second = _two_of_one_request(session)
        # When three attempts in a row fail
        self._fail(session, first, 3)
        # Then the subscription is paused, with the reason, an event and a gauge
        session.refresh(subscription)
        assert subscription.paused_at is not None
        assert "3 failed attempts in a row" in (subscription.pause_reason or "")
        events = session.scalars(
            select(Event.kind).where(
                Event.entity == "webhook_subscription", Event.entity_id == subscription.id
            )
        ).all()
        assert events == ["webhook_subscription.paused"]
        [gauge] = [m for m in metrics.collect_from(session) if m.name == "cancelflow_webhook_subscriptions"]
        assert {s.labels["status"]: s.value for s in gauge.samples}["paused"] >= 1
        # And its deliveries are neither tried nor swept, nor do new events publish anything
        calls: list[httpx.Request] = []
        first.next_attempt_at = now() - timedelta(seconds=1)
        session.flush()
        assert webhook_delivery.deliver(session, first.id, client=_client(_answer(200, calls))) == "paused"
        assert calls == []
        _clear_sends(session)
        webhook_delivery.sweep_due(session)
        assert (first.id,) not in _deliver_sends(session)
        later = _request(session)
        approval.approve(session, later, actor="test")
        [fresh] = [d for d in _deliveries(session, subscription) if d.request_id == later.id]
        assert (fresh.id,) not in _deliver_sends(session)  # written, kept for the resume, not sent

        # When staff resume it
        webhook_subscriptions.resume_subscription(session, subscription.id)
        session.refresh(subscription)
        assert (subscription.paused_at, subscription.consecutive_failures) == (None, 0)
        # Then the sweep sends the waiting deliveries, oldest of each request first, and they go out
        session.refresh(first)
        _clear_sends(session)
        webhook_delivery.sweep_due(session)
        sent = _deliver_sends(session)
        assert (first.id,) in sent
        assert (fresh.id,) in sent
        assert (second.id,) not in sent
        assert webhook_delivery.deliver(session, first.id, client=_client(_answer(200, calls))) == "delivered"
        assert (
            webhook_delivery.deliver(session, second.id, client=_client(_answer(200, calls))) == "delivered"
        )
        kinds = session.scalars(
            select(Event.kind)
            .where(Event.entity == "webhook_subscription", Event.entity_id == subscription.id)
            .order_by(Event.id)
        ).all()
        assert kinds == ["webhook_subscription.paused", "webhook_subscription.resumed"]

    def test_resume_of_an_unknown_or_removed_subscription_is_not_found(self, session: Session) -> None:
        from cancelflow.errors import NotFound

        subscription = _subscribe(session, "*")
        webhook_subscriptions.remove_subscription(session, subscription.id)
        with pytest.raises(NotFound):
            webhook_subscriptions.resume_subscription(session, subscription.id)
        with pytest.raises(NotFound):
            webhook_subscriptions.resume_subscription(session, 2**62)
