"""Outbound webhooks to storefronts, through a transactional outbox (DESIGN rule 9).

Writing
    `on_transition()` is called by `transitions.move()` for every request and plan transition; `emit()`
    is for events that are not transitions (`plan.escalated`). Both insert one `WebhookDelivery` row per
    matching active subscription, in the caller's transaction, and ask for `webhooks.deliver` after
    commit. No subscription, no work beyond one indexed query.

Delivering
    `deliver()` claims the row (`FOR UPDATE SKIP LOCKED`) and POSTs the stored payload. Per request and
    subscription, deliveries go out in id order: while an older one is neither delivered nor dead, a
    younger one waits (the older one nudges it when it finishes; the sweep sends only the oldest
    unfinished one of each request). 2xx is delivered; a 4xx other than 408/429 is dead at once
    (retrying cannot fix it); anything else (5xx, 3xx, 408, 429, no answer) is retried with exponential
    backoff and jitter until `settings.step_max_attempts`, then dead. Every try is a `WebhookAttempt`
    row. `redeliver()` starts a new attempt cycle by hand with the same event id.

Waiting
    Nothing waits in the broker: a delivery that must wait (behind an older one, or for its backoff) is
    a database timer, `next_attempt_at`, and `webhooks.sweep` sends it when due. A receiver that is slow
    or dead therefore costs one message per due attempt on the `webhooks` queue, never a loop.

Pausing
    A subscription whose receiver failed `settings.webhook_pause_after` attempts in a row is paused (as
    Shopify and Stripe stop endpoints that keep failing): its deliveries stay where they are and are not
    tried, staff are told (an event, a warning, `paused_at` in listings, the subscription gauge), and
    `resume_subscription()` sends them again. Outbox rows are still written while it is paused.

Signing (Stripe-style; what a receiver checks)
    Headers: `X-Cancelflow-Event-Id` (the dedupe key, the same on every retry and redelivery),
    `X-Cancelflow-Event-Type`, `X-Cancelflow-Timestamp` (unix seconds) and
    `X-Cancelflow-Signature: t=<timestamp>,v1=<hex>` where
    `hex = HMAC-SHA256(key=secret, msg=f"{timestamp}.{raw_body}")` over the raw request body bytes.
    The receiver recomputes it with its secret, compares in constant time, and rejects timestamps too
    far from its clock (replays). `verify_signature()` is the reference implementation.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from sqlalchemy import ColumnElement, func, literal, select, text, update
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.orm import Session, aliased

from cancelflow.config import get_settings
from cancelflow.errors import Invalid, NotFound
from cancelflow.integrations import outbound
from cancelflow.integrations.http import retry_after
from cancelflow.models import (
    AttemptOutcome,
    CancellationPlan,
    CancellationRequest,
    Channel,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSubscription,
)
from cancelflow.models.enums import PlanStatus, RequestStatus
from cancelflow.services import transitions
from cancelflow.services.clock import now
from cancelflow.services.jobs import enqueue_after_commit
from cancelflow.services.redelivery import redelivery_wait

log = logging.getLogger(__name__)

DELIVER_TASK: Final = "webhooks.deliver"
ALL_EVENTS: Final = "*"
MACHINES: Final = frozenset({"request", "plan"})
EVENT_TYPES: Final[frozenset[str]] = frozenset(
    {f"request.{s.value}" for s in RequestStatus}
    | {f"plan.{s.value}" for s in PlanStatus}
    | {"plan.escalated"}
)
# 4xx answers worth retrying: the receiver timed out reading, or asked us to slow down.
RETRYABLE_4XX: Final = frozenset({408, 429})
UNFINISHED: Final = (DeliveryStatus.pending, DeliveryStatus.failed)
# A delivery waiting behind an older one being sent now is due to the sweep this soon after, should the
# older one's nudge find it locked.
ORDER_WAIT: Final = timedelta(seconds=1)
# How early a retry message may arrive (clocks of different hosts) and still be taken as due.
EARLY_TOLERANCE: Final = timedelta(seconds=0.5)
SWEEP_LOCK_KEY: Final = 0x63667768  # pg advisory lock id held by the one running webhook sweep
SIGNATURE_TOLERANCE_SECONDS: Final = 300
SUBSCRIPTION_LOCK_KEY: Final = (
    0x63667773  # pg advisory lock id held while a subscription is counted and added
)


# --- subscriptions --------------------------------------------------------------------------------------


def validate_events(events: Sequence[str]) -> list[str]:
    """The event types, deduplicated in the given order; Invalid for unknown ones."""
    cleaned = list(dict.fromkeys(e.strip() for e in events if e.strip()))
    if not cleaned:
        raise Invalid("events are required", field_errors={"events": ["This list may not be empty."]})
    unknown = [e for e in cleaned if e != ALL_EVENTS and e not in EVENT_TYPES]
    if unknown:
        raise Invalid(
            "unknown event types",
            field_errors={
                "events": [
                    f"Unknown event type {e!r}; expected '*' or one of {', '.join(sorted(EVENT_TYPES))}."
                    for e in unknown
                ]
            },
        )
    return cleaned


def _validate_url(url: str) -> str:
    """The URL, if it may receive deliveries: http(s), no credentials, a public (or allowlisted) host."""
    cleaned = url.strip()
    problem = outbound.refusal(cleaned)
    if problem is not None:
        raise Invalid("invalid url", field_errors={"url": [problem]})
    return cleaned


def display_url(url: str) -> str:
    """The URL as listed: credentials (of rows older than their refusal), query values (tokens some
    receivers take there) and any fragment are masked."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        parts = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2])
    if parts.query:
        query = urlencode([(k, "***") for k, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
        parts = parts._replace(query=query)
    if parts.fragment:
        parts = parts._replace(fragment="***")
    return urlunsplit(parts)


def create_subscription(
    session: Session, *, url: str, events: Sequence[str], channel_id: int | None = None
) -> WebhookSubscription:
    """A new active subscription with a fresh signing secret (the caller shows it once)."""
    cleaned_url = _validate_url(url)
    cleaned_events = validate_events(events)
    if channel_id is not None and session.get(Channel, channel_id) is None:
        raise Invalid("unknown channel", field_errors={"channel": [f"Channel {channel_id} does not exist."]})
    # Counted and added under one lock, so that concurrent creates cannot pass the cap together.
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SUBSCRIPTION_LOCK_KEY})
    cap = get_settings().webhook_max_subscriptions_per_channel
    active = session.scalar(
        select(func.count())
        .select_from(WebhookSubscription)
        .where(WebhookSubscription.is_active, WebhookSubscription.channel_id.is_not_distinct_from(channel_id))
    )
    if (active or 0) >= cap:
        scope = f"Channel {channel_id}" if channel_id is not None else "The all-channels scope"
        raise Invalid(
            "too many webhook subscriptions",
            field_errors={
                "channel": [
                    f"{scope} already has {active} active subscriptions (at most {cap}); remove one first."
                ]
            },
            code="subscription_limit",
        )
    subscription = WebhookSubscription(
        url=cleaned_url,
        secret=f"whsec_{secrets.token_hex(24)}",
        events=cleaned_events,
        channel_id=channel_id,
        is_active=True,
    )
    session.add(subscription)
    session.flush()
    return subscription


def list_subscriptions(session: Session, *, include_inactive: bool = False) -> list[WebhookSubscription]:
    query = select(WebhookSubscription).order_by(WebhookSubscription.id)
    if not include_inactive:
        query = query.where(WebhookSubscription.is_active)
    return list(session.scalars(query))


def remove_subscription(session: Session, subscription_id: int) -> None:
    """Deactivate (the delivery history stays); its unfinished deliveries die at their next try."""
    result = session.execute(
        update(WebhookSubscription)
        .where(WebhookSubscription.id == subscription_id, WebhookSubscription.is_active)
        .values(is_active=False, modified_date=now())
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"no active webhook subscription {subscription_id}")


def resume_subscription(session: Session, subscription_id: int) -> WebhookSubscription:
    """Resume a paused subscription: its unfinished deliveries are due now (the sweep sends them)."""
    subscription = session.scalars(
        select(WebhookSubscription)
        .where(WebhookSubscription.id == subscription_id, WebhookSubscription.is_active)
        .with_for_update()
    ).one_or_none()
    if subscription is None:
        raise NotFound(f"no active webhook subscription {subscription_id}")
    if subscription.paused_at is None:
        return subscription  # not paused: nothing to do
    stamp = now()
    paused_at = subscription.paused_at
    subscription.paused_at = None
    subscription.pause_reason = None
    subscription.consecutive_failures = 0
    subscription.modified_date = stamp
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.subscription_id == subscription_id, WebhookDelivery.status.in_(UNFINISHED))
        .values(next_attempt_at=stamp, modified_date=stamp)
    )
    transitions.record_event(
        session,
        "webhook_subscription",
        subscription_id,
        "webhook_subscription.resumed",
        from_status="paused",
        to_status="active",
        data={"paused_at": paused_at.isoformat()},
    )
    session.flush()
    log.warning("webhook subscription %s resumed", subscription_id)
    return subscription


def _count_failure(session: Session, subscription: WebhookSubscription, error: str | None) -> None:
    """One more failed attempt in a row; pause the subscription when there have been too many."""
    failures = session.scalar(
        update(WebhookSubscription)
        .where(WebhookSubscription.id == subscription.id)
        .values(consecutive_failures=WebhookSubscription.consecutive_failures + 1)
        .returning(WebhookSubscription.consecutive_failures)
    )
    limit = get_settings().webhook_pause_after
    if failures is None or failures < limit:
        return
    reason = f"{failures} failed attempts in a row, the last: {error or 'no answer'}"[:500]
    paused = session.execute(
        update(WebhookSubscription)
        .where(WebhookSubscription.id == subscription.id, WebhookSubscription.paused_at.is_(None))
        .values(paused_at=now(), pause_reason=reason, modified_date=now())
    )
    if paused.rowcount == 0:  # type: ignore[attr-defined]
        return  # already paused by a concurrent attempt
    transitions.record_event(
        session,
        "webhook_subscription",
        subscription.id,
        "webhook_subscription.paused",
        from_status="active",
        to_status="paused",
        data={"consecutive_failures": failures, "reason": reason},
    )
    log.warning(
        "webhook subscription %s paused after %s failed attempts in a row; `cancelflow webhooks resume %s` "
        "sends its deliveries again",
        subscription.id,
        failures,
        subscription.id,
    )


def _count_success(session: Session, subscription: WebhookSubscription) -> None:
    session.execute(
        update(WebhookSubscription)
        .where(WebhookSubscription.id == subscription.id, WebhookSubscription.consecutive_failures != 0)
        .values(consecutive_failures=0)
    )


# --- writing the outbox ---------------------------------------------------------------------------------


def listening(event_type: ColumnElement[str]) -> ColumnElement[bool]:
    """SQL: does any active subscription listen for `event_type`? (Folded into a transition's statement.)"""
    return (
        select(WebhookSubscription.id)
        .where(
            WebhookSubscription.is_active,
            WebhookSubscription.events.op("?|")(array([event_type, literal(ALL_EVENTS)])),
        )
        .exists()
    )


def _matching(session: Session, event_type: str) -> list[WebhookSubscription]:
    # `events ?| array[...]`: the partial GIN index answers it; nothing else is read when nobody listens.
    return list(
        session.scalars(
            select(WebhookSubscription)
            .where(
                WebhookSubscription.is_active,
                WebhookSubscription.events.op("?|")(array([event_type, ALL_EVENTS])),
            )
            .order_by(WebhookSubscription.id)
        )
    )


def _money(value: Decimal) -> str:
    return str(value)


def build_payload(
    *,
    event_id: uuid.UUID,
    event_type: str,
    created_at: datetime,
    request: CancellationRequest,
    plan: CancellationPlan | None,
    extra: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    """The JSON a receiver gets. Identifiers and statuses only: no IBAN, no names, no emails."""
    data: dict[str, Any] = {
        "request": {
            "id": request.id,
            "uuid": str(request.uuid),
            "status": request.status.value,
            "order_item": request.order_item_id,
            "quantity": request.quantity,
            "cancellation_type": request.cancellation_type.value,
            "client_request_id": request.client_request_id,
        },
        "plan": {
            "id": plan.id,
            "status": plan.status.value,
            "amount": _money(plan.amount),
            "currency": plan.currency,
            "refund_target": plan.refund_target.value,
        }
        if plan is not None
        else None,
    }
    for key, value in (extra or {}).items():
        data.setdefault(key, value)
    return {
        "id": str(event_id),
        "type": event_type,
        "created_at": created_at.isoformat(),
        "data": data,
    }


def _fan_out(
    session: Session,
    event_type: str,
    *,
    request: CancellationRequest | None = None,
    request_id: int | None = None,
    plan: CancellationPlan | None = None,
    extra: Mapping[str, object] | None = None,
) -> list[WebhookDelivery]:
    subscriptions = _matching(session, event_type)
    if not subscriptions:
        return []
    if request is None:
        request = session.get(CancellationRequest, request_id) if request_id is not None else None
        if request is None:
            log.warning("webhook %s for missing request %s dropped", event_type, request_id)
            return []
    subscriptions = [s for s in subscriptions if s.channel_id in (None, request.channel_id)]
    if not subscriptions:
        return []
    if plan is None:
        plan = session.scalars(
            select(CancellationPlan).where(CancellationPlan.request_id == request.id)
        ).one_or_none()
    stamp = now()
    event_id = uuid.uuid4()  # one event, one id, whichever subscriptions receive it
    payload = build_payload(
        event_id=event_id, event_type=event_type, created_at=stamp, request=request, plan=plan, extra=extra
    )
    # Not due before the grace: the message sent after commit is the fast path; the sweep is the backstop.
    due = stamp + get_settings().redelivery_grace
    deliveries = [
        WebhookDelivery(
            subscription_id=s.id,
            event_id=event_id,
            event_type=event_type,
            request_id=request.id,
            payload=payload,
            status=DeliveryStatus.pending,
            attempt=0,
            next_attempt_at=due,
        )
        for s in subscriptions
    ]
    session.add_all(deliveries)
    session.flush()
    paused = {s.id for s in subscriptions if s.paused_at is not None}
    for delivery in deliveries:
        if delivery.subscription_id not in paused:  # kept for when staff resume the subscription
            enqueue_after_commit(session, DELIVER_TASK, delivery.id)
    return deliveries


def on_transition(
    session: Session, machine: str, obj: object, from_status: object, to_status: object
) -> list[WebhookDelivery]:
    """Outbox rows for a request or plan transition (called by `transitions.move`)."""
    if machine not in MACHINES:
        return []
    to = getattr(to_status, "value", to_status)
    event_type = f"{machine}.{to}"
    if isinstance(obj, CancellationRequest):
        return _fan_out(session, event_type, request=obj)
    if isinstance(obj, CancellationPlan):
        return _fan_out(session, event_type, request_id=obj.request_id, plan=obj)
    return []


def emit(
    session: Session, event_type: str, request_id: int, payload: Mapping[str, object] | None = None
) -> list[WebhookDelivery]:
    """Outbox rows for an event that is not a transition (e.g. `plan.escalated`).

    `payload` adds keys to the event's `data` beside `request` and `plan`; it must carry no personal data.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    return _fan_out(session, event_type, request_id=request_id, extra=payload)


# --- signing --------------------------------------------------------------------------------------------


def encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Cancelflow-Signature` header value."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    *,
    tolerance_seconds: int = SIGNATURE_TOLERANCE_SECONDS,
    at: float | None = None,
) -> bool:
    """What a receiver does: recompute, compare in constant time, refuse stale timestamps."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):  # no or malformed timestamp: not our signature
        return False
    if abs((time.time() if at is None else at) - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, candidate) for candidate in fields.get("v1", []))


def headers_for(delivery: WebhookDelivery, secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "cancelflow-webhooks/1",
        "X-Cancelflow-Event-Id": str(delivery.event_id),
        "X-Cancelflow-Event-Type": delivery.event_type,
        "X-Cancelflow-Timestamp": str(timestamp),
        "X-Cancelflow-Signature": sign(secret, timestamp, body),
    }


# --- delivering -----------------------------------------------------------------------------------------


def classify(status_code: int | None) -> AttemptOutcome:
    """2xx delivered; a 4xx other than 408/429 dead; anything else (or no answer) worth a retry."""
    if status_code is not None and 200 <= status_code < 300:
        return AttemptOutcome.delivered
    if status_code is not None and 400 <= status_code < 500 and status_code not in RETRYABLE_4XX:
        return AttemptOutcome.dead
    return AttemptOutcome.retry


def backoff(attempt: int) -> timedelta:
    """Exponential backoff with equal jitter, capped: the same settings as workflow steps."""
    settings = get_settings()
    base = settings.retry_backoff_base.total_seconds()
    cap = settings.retry_backoff_max.total_seconds()
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    return timedelta(seconds=delay / 2 + random.uniform(0, delay / 2))


def older_unfinished(session: Session, delivery: WebhookDelivery) -> WebhookDelivery | None:
    """The oldest delivery of the same request to the same subscription that must go out first."""
    return session.scalars(
        select(WebhookDelivery)
        .where(
            WebhookDelivery.subscription_id == delivery.subscription_id,
            WebhookDelivery.request_id == delivery.request_id,
            WebhookDelivery.id < delivery.id,
            WebhookDelivery.status.in_(UNFINISHED),
        )
        .order_by(WebhookDelivery.id)
        .limit(1)
    ).first()


def _post(client: httpx.Client | None, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST without reading the answer's body: only its status is kept."""
    if client is not None:
        response = client.send(client.build_request("POST", url, content=body, headers=headers), stream=True)
        response.close()
        return response
    with outbound.guarded_client() as own:
        response = own.send(own.build_request("POST", url, content=body, headers=headers), stream=True)
        response.close()
        return response


def deliver(session: Session, delivery_id: int, *, client: httpx.Client | None = None) -> str:
    """One try of one delivery; returns what happened (for logs and tests)."""
    delivery = session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.id == delivery_id).with_for_update(skip_locked=True)
    ).one_or_none()
    if delivery is None:
        return "locked_or_missing"  # another worker holds it, or it never existed
    if delivery.status not in UNFINISHED:
        return f"already_{delivery.status.value}"
    stamp = now()
    if delivery.status == DeliveryStatus.failed and delivery.next_attempt_at > stamp + EARLY_TOLERANCE:
        # A duplicate message for an attempt already made: the backoff timer stands.
        return "not_due"
    subscription = session.get(WebhookSubscription, delivery.subscription_id)
    if subscription is None or not subscription.is_active:
        delivery.status = DeliveryStatus.dead
        delivery.last_error = "subscription removed"
        delivery.modified_date = stamp
        _nudge_next(session, delivery)
        return "dead"
    if subscription.paused_at is not None:
        return "paused"  # not an attempt: the row waits, as it is, until staff resume the subscription
    blocker = older_unfinished(session, delivery)
    if blocker is not None:
        # Not an attempt, and no message: the older one nudges this one when it is delivered or dead.
        # Should that nudge find this row locked, the sweep sends it once the older one is done.
        if blocker.status == DeliveryStatus.pending:
            wait_until = stamp + ORDER_WAIT
        else:
            wait_until = max(stamp, blocker.next_attempt_at) + ORDER_WAIT
        delivery.next_attempt_at = wait_until
        delivery.modified_date = stamp
        return "waiting_for_older"

    attempt = delivery.attempt + 1
    timestamp = int(stamp.timestamp())
    body = encode(delivery.payload)
    status_code: int | None = None
    error: str | None = None
    refused = False  # the destination is outside the outbound policy: no retry can reach it
    wait: float | None = None  # the receiver's Retry-After, in seconds
    started = time.monotonic()
    try:
        response = _post(
            client, subscription.url, body, headers_for(delivery, subscription.secret, timestamp, body)
        )
        status_code = response.status_code
        if not response.is_success:
            # The status only: what the far side answered is not ours to store or show.
            error = outbound.failure_reason(status_code=status_code)
            wait = retry_after(response.headers.get("Retry-After"))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # no answer: recorded as a failed attempt
        error = outbound.failure_reason(exc)
        refused = error in (outbound.NOT_ALLOWED, outbound.INVALID_URL)
        log.info("webhook delivery %s: %s (%s)", delivery.id, error, type(exc).__name__)
    duration_ms = int((time.monotonic() - started) * 1000)

    outcome = AttemptOutcome.dead if refused else classify(status_code)
    if outcome == AttemptOutcome.retry and attempt >= get_settings().step_max_attempts:
        outcome = AttemptOutcome.dead
    session.add(
        WebhookAttempt(
            delivery_id=delivery.id,
            attempted_at=stamp,
            duration_ms=duration_ms,
            status_code=status_code,
            error=error,
            outcome=outcome,
        )
    )
    delivery.attempt = attempt
    delivery.last_status_code = status_code
    delivery.last_error = error
    delivery.modified_date = now()
    if outcome == AttemptOutcome.delivered:
        delivery.status = DeliveryStatus.delivered
        delivery.delivered_at = now()
        _count_success(session, subscription)
    else:
        if outcome == AttemptOutcome.dead:
            delivery.status = DeliveryStatus.dead
        else:
            delay = backoff(attempt)
            if wait is not None:  # a receiver that says when to come back (429, 503) is taken at its word
                delay = max(delay, timedelta(seconds=wait))
            delivery.status = DeliveryStatus.failed
            # A database timer, not a broker countdown: `webhooks.sweep` sends it when due.
            delivery.next_attempt_at = now() + delay
        if not refused:  # a destination outside the policy says nothing about the receiver
            _count_failure(session, subscription, error)
    session.flush()
    if delivery.status in (DeliveryStatus.delivered, DeliveryStatus.dead):
        _nudge_next(session, delivery)
    log.info(
        "webhook delivery %s attempt %s: %s (%s)", delivery.id, attempt, outcome.value, status_code or error
    )
    return outcome.value


def _nudge_next(session: Session, delivery: WebhookDelivery) -> None:
    """The next delivery of this request to this subscription was waiting for this one: send it now."""
    following = session.scalars(
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.subscription_id == delivery.subscription_id,
            WebhookDelivery.request_id == delivery.request_id,
            WebhookDelivery.id > delivery.id,
            WebhookDelivery.status == DeliveryStatus.pending,
        )
        .order_by(WebhookDelivery.id)
        .limit(1)
    ).first()
    if following is not None:
        enqueue_after_commit(session, DELIVER_TASK, following)


def redeliver(session: Session, delivery_id: int) -> WebhookDelivery:
    """Start a new attempt cycle by hand: same event id, attempts counted from zero, history kept."""
    delivery = session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.id == delivery_id).with_for_update()
    ).one_or_none()
    if delivery is None:
        raise NotFound(f"no webhook delivery {delivery_id}")
    subscription = session.get(WebhookSubscription, delivery.subscription_id)
    if subscription is None or not subscription.is_active:
        raise Invalid(
            "subscription removed",
            field_errors={"subscription": [f"Subscription {delivery.subscription_id} is not active."]},
        )
    stamp = now()
    delivery.status = DeliveryStatus.pending
    delivery.attempt = 0
    delivery.next_attempt_at = stamp + get_settings().redelivery_grace
    delivery.modified_date = stamp
    session.flush()
    enqueue_after_commit(session, DELIVER_TASK, delivery.id)
    return delivery


def sweep_due(session: Session, *, limit: int = 500) -> int:
    """Re-send every unfinished delivery whose time has come (a lost message, a long backoff)."""
    if not session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": SWEEP_LOCK_KEY}).scalar():
        log.info("another webhook sweep holds the lock; skipping")
        return 0
    stamp = now()
    older = aliased(WebhookDelivery)
    due = session.scalars(
        select(WebhookDelivery.id)
        .join(WebhookSubscription, WebhookSubscription.id == WebhookDelivery.subscription_id)
        .where(
            WebhookDelivery.status.in_(UNFINISHED),
            WebhookDelivery.next_attempt_at <= stamp,
            WebhookSubscription.paused_at.is_(None),
            # Only the oldest unfinished delivery of each request: the younger ones wait for its nudge.
            ~select(older.id)
            .where(
                older.subscription_id == WebhookDelivery.subscription_id,
                older.request_id == WebhookDelivery.request_id,
                older.id < WebhookDelivery.id,
                older.status.in_(UNFINISHED),
            )
            .exists(),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(of=WebhookDelivery, skip_locked=True)
    ).all()
    if not due:
        return 0
    # Pending means "due, a message is on its way": no re-send before the grace, and the retry guard in
    # deliver() does not take the re-sent message for an early duplicate.
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(due))
        .values(
            status=DeliveryStatus.pending,
            next_attempt_at=stamp + redelivery_wait(WebhookDelivery.modified_date, stamp),
        )
    )
    for delivery_id in due:
        enqueue_after_commit(session, DELIVER_TASK, delivery_id)
    log.info("webhook sweep re-sent %d due deliveries", len(due))
    return len(due)


# --- reading --------------------------------------------------------------------------------------------


def get_delivery(session: Session, delivery_id: int) -> WebhookDelivery:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        raise NotFound(f"no webhook delivery {delivery_id}")
    return delivery


def next_attempt(delivery: WebhookDelivery) -> datetime | None:
    """When an unfinished delivery is tried next; None once it is delivered or dead (the column then holds
    only the last timer, which no attempt will follow)."""
    return delivery.next_attempt_at if delivery.status in UNFINISHED else None


def list_deliveries(
    session: Session,
    *,
    status: DeliveryStatus | None = None,
    subscription_id: int | None = None,
    request_id: int | None = None,
    limit: int = 100,
) -> list[WebhookDelivery]:
    """Newest first."""
    query = select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(limit)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    if subscription_id is not None:
        query = query.where(WebhookDelivery.subscription_id == subscription_id)
    if request_id is not None:
        query = query.where(WebhookDelivery.request_id == request_id)
    return list(session.scalars(query))


def list_attempts(session: Session, delivery_id: int) -> list[WebhookAttempt]:
    get_delivery(session, delivery_id)
    return list(
        session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery_id)
            .order_by(WebhookAttempt.id)
        )
    )


def count_attempts(session: Session, delivery_id: int) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
        )
        or 0
    )


__all__ = [
    "DELIVER_TASK",
    "EVENT_TYPES",
    "build_payload",
    "classify",
    "create_subscription",
    "deliver",
    "emit",
    "list_attempts",
    "list_deliveries",
    "on_transition",
    "redeliver",
    "remove_subscription",
    "resume_subscription",
    "sign",
    "sweep_due",
    "verify_signature",
]
