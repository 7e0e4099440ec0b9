"""Delivering the webhook outbox: one try of a row, the order and timers of retries, the sweep.

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

Status
    Every status change goes through `DELIVERY_MACHINE` (`models.webhooks`): `_move()` for a locked row; the sweep
    checks each row it locked before its one bulk update.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Final

import httpx
from sqlalchemy import DateTime, Integer, bindparam, func, select, text, update
from sqlalchemy.orm import Session, aliased

from cancelflow.config import get_settings
from cancelflow.errors import Invalid, NotFound
from cancelflow.integrations import webhooks as http
from cancelflow.models import (
    AttemptOutcome,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSubscription,
)
from cancelflow.models.webhooks import DELIVERY_MACHINE, UNFINISHED
from cancelflow.services import keyset
from cancelflow.services.after_commit import enqueue_after_commit
from cancelflow.services.clock import now
from cancelflow.services.redelivery import redelivery_wait
from cancelflow.services.steps import backoff
from cancelflow.services.webhooks.outbox import DELIVER_TASK
from cancelflow.services.webhooks.subscriptions import count_failure, count_success

log = logging.getLogger(__name__)

# 4xx answers worth retrying: the receiver timed out reading, or asked us to slow down.
RETRYABLE_4XX: Final = frozenset({408, 429})
# A delivery waiting behind an older one being sent now is due to the sweep this soon after, should the
# older one's nudge find it locked.
ORDER_WAIT: Final = timedelta(seconds=1)
# How early a retry message may arrive (clocks of different hosts) and still be taken as due.
EARLY_TOLERANCE: Final = timedelta(seconds=0.5)
SWEEP_LOCK_KEY: Final = 0x63667768  # pg advisory lock id held by the one running webhook sweep


def _move(delivery: WebhookDelivery, target: DeliveryStatus, stamp: datetime) -> None:
    """The one change of a locked delivery's status; InvalidTransition for a move the table forbids."""
    DELIVERY_MACHINE.require(delivery.status, target)
    delivery.status = target
    delivery.modified_date = stamp


def classify(status_code: int | None) -> AttemptOutcome:
    """2xx delivered; a 4xx other than 408/429 dead; anything else (or no answer) worth a retry."""
    if status_code is not None and 200 <= status_code < 300:
        return AttemptOutcome.delivered
    if status_code is not None and 400 <= status_code < 500 and status_code not in RETRYABLE_4XX:
        return AttemptOutcome.dead
    return AttemptOutcome.retry


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
        _move(delivery, DeliveryStatus.dead, stamp)
        delivery.last_error = "subscription removed"
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
    body = http.encode(delivery.payload)
    headers = http.headers_for(
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        secret=subscription.secret,
        timestamp=timestamp,
        body=body,
    )
    answer = http.post(subscription.url, body, headers, client=client)

    outcome = AttemptOutcome.dead if answer.refused else classify(answer.status_code)
    if outcome == AttemptOutcome.retry and attempt >= get_settings().step_max_attempts:
        outcome = AttemptOutcome.dead
    session.add(
        WebhookAttempt(
            delivery_id=delivery.id,
            attempted_at=stamp,
            duration_ms=answer.duration_ms,
            status_code=answer.status_code,
            error=answer.error,
            outcome=outcome,
        )
    )
    delivery.attempt = attempt
    delivery.last_status_code = answer.status_code
    delivery.last_error = answer.error
    finished = now()
    if outcome == AttemptOutcome.delivered:
        _move(delivery, DeliveryStatus.delivered, finished)
        delivery.delivered_at = finished
        count_success(session, subscription)
    else:
        if outcome == AttemptOutcome.dead:
            _move(delivery, DeliveryStatus.dead, finished)
        else:
            delay = backoff(attempt)
            if answer.retry_after is not None:
                # A receiver that says when to come back (429, 503) is taken at its word.
                delay = max(delay, timedelta(seconds=answer.retry_after))
            _move(delivery, DeliveryStatus.failed, finished)
            # A database timer, not a broker countdown: `webhooks.sweep` sends it when due.
            delivery.next_attempt_at = finished + delay
        if not answer.refused:  # a destination outside the policy says nothing about the receiver
            count_failure(session, subscription, answer.error)
    session.flush()
    if delivery.status in (DeliveryStatus.delivered, DeliveryStatus.dead):
        _nudge_next(session, delivery)
    log.info(
        "webhook delivery %s attempt %s: %s (%s)",
        delivery.id,
        attempt,
        outcome.value,
        answer.status_code or answer.error,
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
    _move(delivery, DeliveryStatus.pending, stamp)
    delivery.attempt = 0
    delivery.next_attempt_at = stamp + get_settings().redelivery_grace
    session.flush()
    enqueue_after_commit(session, DELIVER_TASK, delivery.id)
    return delivery


_OLDER: Final = aliased(WebhookDelivery)
# Built once: the sweep runs every tick, and building and keying the statement cost more than running it.
_DUE: Final = (
    select(WebhookDelivery.id, WebhookDelivery.status)
    .join(WebhookSubscription, WebhookSubscription.id == WebhookDelivery.subscription_id)
    .where(
        WebhookDelivery.status.in_(UNFINISHED),
        WebhookDelivery.next_attempt_at <= bindparam("stamp", type_=DateTime(timezone=True)),
        WebhookSubscription.paused_at.is_(None),
        # Only the oldest unfinished delivery of each request: the younger ones wait for its nudge.
        ~select(_OLDER.id)
        .where(
            _OLDER.subscription_id == WebhookDelivery.subscription_id,
            _OLDER.request_id == WebhookDelivery.request_id,
            _OLDER.id < WebhookDelivery.id,
            _OLDER.status.in_(UNFINISHED),
        )
        .exists(),
    )
    .order_by(WebhookDelivery.next_attempt_at)
    .limit(bindparam("limit", type_=Integer()))
    .with_for_update(of=WebhookDelivery, skip_locked=True)
)


def sweep_due(session: Session, *, limit: int = 500) -> int:
    """Re-send every unfinished delivery whose time has come (a lost message, a long backoff)."""
    if not session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": SWEEP_LOCK_KEY}).scalar():
        log.info("another webhook sweep holds the lock; skipping")
        return 0
    stamp = now()
    rows = session.execute(_DUE, {"stamp": stamp, "limit": limit}).all()
    if not rows:
        return 0
    for _, status in rows:
        DELIVERY_MACHINE.require(status, DeliveryStatus.pending)
    due = [delivery_id for delivery_id, _ in rows]
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


def dead_deliveries_page(
    session: Session, *, limit: int, after: keyset.Key | None = None, before: keyset.Key | None = None
) -> keyset.KeysetPage[WebhookDelivery]:
    """A page of the deliveries that died, newest first (as `list_deliveries(status=dead)`); its cursors are
    delivery ids."""
    return keyset.page(
        session,
        select(WebhookDelivery).where(WebhookDelivery.status == DeliveryStatus.dead),
        (WebhookDelivery.id,),
        lambda delivery: (delivery.id,),
        descending=True,
        limit=limit,
        after=after,
        before=before,
    )


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
    "classify",
    "count_attempts",
    "deliver",
    "get_delivery",
    "list_attempts",
    "list_deliveries",
    "next_attempt",
    "older_unfinished",
    "redeliver",
    "sweep_due",
]
