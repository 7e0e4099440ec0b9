"""Outbound webhooks to storefronts: subscriptions, the outbox of deliveries, and every attempt made.

A `WebhookDelivery` row is written in the transaction of the change it reports (the outbox), so a
change and its notification commit or roll back together. The row is the truth; the broker message that
asks for its delivery only nudges it, and the beat sweep finds rows whose time has come.
"""

from __future__ import annotations

import uuid as uuid_lib
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from cancelflow.models.base import Base, TimestampMixin
from cancelflow.models.catalog import enum_column
from cancelflow.models.machine import Machine


class DeliveryStatus(StrEnum):
    # Due, with a message on its way: new, redelivered by hand, or woken by the sweep after a failure.
    pending = "pending"
    failed = "failed"  # the last try failed; retried at next_attempt_at
    delivered = "delivered"
    dead = "dead"  # given up: a 4xx that retrying cannot fix, or the attempts ran out


# Redelivery by hand starts a new cycle from any status; the sweep re-sends a pending row whose message was
# lost; a failed row tried again may fail again.
DELIVERY_TRANSITIONS: Final[Mapping[DeliveryStatus, frozenset[DeliveryStatus]]] = {
    DeliveryStatus.pending: frozenset(
        {DeliveryStatus.pending, DeliveryStatus.failed, DeliveryStatus.delivered, DeliveryStatus.dead}
    ),
    DeliveryStatus.failed: frozenset(
        {DeliveryStatus.pending, DeliveryStatus.failed, DeliveryStatus.delivered, DeliveryStatus.dead}
    ),
    DeliveryStatus.delivered: frozenset({DeliveryStatus.pending}),
    DeliveryStatus.dead: frozenset({DeliveryStatus.pending}),
}
DELIVERY_MACHINE: Final = Machine("webhook_delivery", DELIVERY_TRANSITIONS)
# Still to be tried: at its next_attempt_at, or as soon as an older delivery of its request is done.
UNFINISHED: Final = (DeliveryStatus.pending, DeliveryStatus.failed)


class AttemptOutcome(StrEnum):
    delivered = "delivered"
    retry = "retry"
    dead = "dead"


class WebhookSubscription(TimestampMixin, Base):
    __tablename__ = "webhook_subscriptions"
    __table_args__ = (
        # The hook in every request/plan transition asks "who wants this event type?": one GIN lookup.
        Index(
            "ix_webhook_subscriptions_active_events",
            "events",
            postgresql_using="gin",
            postgresql_where=text("is_active"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    # Kept in the clear: it is the HMAC key, needed to sign every delivery. Shown once at creation.
    secret: Mapped[str] = mapped_column(String(200))
    # Event types ("request.completed", "plan.failed", "plan.escalated") or "*" for all.
    events: Mapped[list[str]] = mapped_column(JSONB, default=list)
    # None: every channel.
    channel_id: Mapped[int | None] = mapped_column(ForeignKey("channels.id"), nullable=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Failed attempts in a row across its deliveries; a delivered one resets it. At
    # `settings.webhook_pause_after` the subscription is paused: its deliveries wait until staff resume it.
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    paused_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    pause_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class WebhookDelivery(TimestampMixin, Base):
    """One event for one subscription: the outbox row."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("subscription_id", "event_id", name="uq_webhook_deliveries_subscription_event"),
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status IN ('pending', 'failed')"),
        ),
        # Per-request ordering: "is an older delivery of this request to this subscription unfinished?"
        Index("ix_webhook_deliveries_order", "subscription_id", "request_id", "id"),
        Index("ix_webhook_deliveries_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("webhook_subscriptions.id"))
    # The receiver's dedupe key; the same for every attempt and every manual redelivery.
    event_id: Mapped[uuid_lib.UUID] = mapped_column(Uuid, default=uuid_lib.uuid4)
    event_type: Mapped[str] = mapped_column(String(60))
    request_id: Mapped[int] = mapped_column(ForeignKey("cancellation_requests.id"), index=True)
    payload: Mapped[dict[str, object]] = mapped_column(JSONB, default=dict)
    status: Mapped[DeliveryStatus] = mapped_column(
        enum_column(DeliveryStatus, "webhook_delivery_status"), default=DeliveryStatus.pending
    )
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebhookAttempt(Base):
    """One HTTP try of a delivery, kept for operators."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id"), index=True)
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    outcome: Mapped[AttemptOutcome] = mapped_column(enum_column(AttemptOutcome, "webhook_attempt_outcome"))


__all__ = [
    "DELIVERY_MACHINE",
    "DELIVERY_TRANSITIONS",
    "UNFINISHED",
    "AttemptOutcome",
    "DeliveryStatus",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookSubscription",
]
