"""The webhook outbox: one `WebhookDelivery` row per event and listening subscription.

`on_transition()` is called by `transitions.move()` for every request and plan transition; `emit()` is
for events that are not transitions (`plan.escalated`). Both insert one row per matching active
subscription, in the caller's transaction (so a change and its notification commit or roll back
together), and ask for `webhooks.deliver` after commit. No subscription, no work beyond one indexed query.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import ColumnElement, literal, select
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.orm import Session

from cancelflow.config import get_settings
from cancelflow.models import (
    CancellationPlan,
    CancellationRequest,
    DeliveryStatus,
    WebhookDelivery,
    WebhookSubscription,
)
from cancelflow.models.enums import PlanStatus, RequestStatus
from cancelflow.services.after_commit import enqueue_after_commit
from cancelflow.services.clock import now

log = logging.getLogger(__name__)

DELIVER_TASK: Final = "webhooks.deliver"
ALL_EVENTS: Final = "*"
MACHINES: Final = frozenset({"request", "plan"})
EVENT_TYPES: Final[frozenset[str]] = frozenset(
    {f"request.{s.value}" for s in RequestStatus}
    | {f"plan.{s.value}" for s in PlanStatus}
    | {"plan.escalated"}
)


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


__all__ = [
    "ALL_EVENTS",
    "DELIVER_TASK",
    "EVENT_TYPES",
    "MACHINES",
    "build_payload",
    "emit",
    "listening",
    "on_transition",
]
