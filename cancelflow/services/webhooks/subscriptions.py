"""Webhook subscriptions: who receives which events, and pausing a receiver that keeps failing.

Pausing
    A subscription whose receiver failed `settings.webhook_pause_after` attempts in a row is paused (as
    Shopify and Stripe stop endpoints that keep failing): its deliveries stay where they are and are not
    tried, staff are told (an event, a warning, `paused_at` in listings, the subscription gauge), and
    `resume_subscription()` sends them again. Outbox rows are still written while it is paused.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from cancelflow.config import get_settings
from cancelflow.errors import Invalid, NotFound
from cancelflow.integrations import outbound
from cancelflow.models import Channel, WebhookDelivery, WebhookSubscription
from cancelflow.models.webhooks import UNFINISHED
from cancelflow.services import transitions
from cancelflow.services.clock import now
from cancelflow.services.webhooks.outbox import ALL_EVENTS, EVENT_TYPES

log = logging.getLogger(__name__)

# pg advisory lock id held while a subscription is counted and added
SUBSCRIPTION_LOCK_KEY: Final = 0x63667773


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


def count_failure(session: Session, subscription: WebhookSubscription, error: str | None) -> None:
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


def count_success(session: Session, subscription: WebhookSubscription) -> None:
    """A delivered attempt ends the run of failures."""
    session.execute(
        update(WebhookSubscription)
        .where(WebhookSubscription.id == subscription.id, WebhookSubscription.consecutive_failures != 0)
        .values(consecutive_failures=0)
    )


__all__ = [
    "count_failure",
    "count_success",
    "create_subscription",
    "display_url",
    "list_subscriptions",
    "remove_subscription",
    "resume_subscription",
    "validate_events",
]
