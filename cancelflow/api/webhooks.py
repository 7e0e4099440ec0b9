"""Webhook subscriptions and their deliveries (`/api/v1/webhooks/`), for staff tokens."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import APIRouter, Path, Query, Response

from cancelflow.api.auth import AkinonStaff
from cancelflow.api.deps import DbSession
from cancelflow.api.errors import AKINON_RESPONSES
from cancelflow.api.schemas.webhooks import (
    AttemptOut,
    DeliveryDetail,
    DeliveryList,
    DeliveryOut,
    SubscriptionCreated,
    SubscriptionIn,
    SubscriptionList,
    SubscriptionOut,
)
from cancelflow.models import DeliveryStatus, WebhookDelivery, WebhookSubscription
from cancelflow.services.webhooks import delivery as webhook_delivery
from cancelflow.services.webhooks import subscriptions as webhook_subscriptions

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"], responses=AKINON_RESPONSES)

Id = Annotated[int, Path(gt=0, le=2**63 - 1)]

SIGNING_NOTE = (
    "Each delivery is a JSON `POST` with `X-Cancelflow-Event-Id` (dedupe on it: retries and manual "
    "redeliveries repeat it), `X-Cancelflow-Event-Type`, `X-Cancelflow-Timestamp` (unix seconds) and "
    "`X-Cancelflow-Signature: t=<timestamp>,v1=<hex>`, where `<hex>` is HMAC-SHA256 keyed with the "
    "subscription's secret over `<timestamp>.<raw body>`. Answer 2xx to acknowledge; a 4xx other than "
    "408/429 stops the delivery; anything else is retried with exponential backoff."
)


Subscription = TypeVar("Subscription", bound=SubscriptionOut)


def _subscription(model: type[Subscription], s: WebhookSubscription) -> Subscription:
    """The subscription as `model` lists it: its URL's query values masked."""
    return model.model_validate(s).model_copy(update={"url": webhook_subscriptions.display_url(s.url)})


def _delivery(d: WebhookDelivery) -> DeliveryOut:
    """The delivery as listed: no next attempt once it is delivered or dead."""
    return DeliveryOut.model_validate(d).model_copy(
        update={"next_attempt_at": webhook_delivery.next_attempt(d)}
    )


@router.post(
    "/",
    response_model=SubscriptionCreated,
    status_code=201,
    summary="Subscribe to request and plan events",
    description=f"Creates a subscription and returns its signing secret, once. {SIGNING_NOTE} Staff token.",
)
def create_subscription(
    body: SubscriptionIn, principal: AkinonStaff, session: DbSession
) -> SubscriptionCreated:
    subscription = webhook_subscriptions.create_subscription(
        session, url=body.url, events=body.events, channel_id=body.channel
    )
    session.refresh(subscription)
    return _subscription(SubscriptionCreated, subscription)


@router.get(
    "/",
    response_model=SubscriptionList,
    summary="List active subscriptions",
    description="Active subscriptions in id order; secrets are never listed. Staff token.",
)
def list_subscriptions(principal: AkinonStaff, session: DbSession) -> SubscriptionList:
    results = [_subscription(SubscriptionOut, s) for s in webhook_subscriptions.list_subscriptions(session)]
    return SubscriptionList(count=len(results), results=results)


@router.delete(
    "/{subscription_id}/",
    status_code=204,
    response_class=Response,
    summary="Remove a subscription",
    description=(
        "Deactivates the subscription; its delivery history stays, and its unfinished deliveries stop. "
        "Staff token."
    ),
)
def remove_subscription(subscription_id: Id, principal: AkinonStaff, session: DbSession) -> Response:
    webhook_subscriptions.remove_subscription(session, subscription_id)
    return Response(status_code=204)


@router.post(
    "/{subscription_id}/resume/",
    response_model=SubscriptionOut,
    summary="Resume a paused subscription",
    description=(
        "A subscription is paused after `CANCELFLOW_WEBHOOK_PAUSE_AFTER` failed attempts in a row. Resuming "
        "resets the count and makes its waiting deliveries due now, in order. A subscription that is not "
        "paused is returned as it is. Staff token."
    ),
)
def resume_subscription(subscription_id: Id, principal: AkinonStaff, session: DbSession) -> SubscriptionOut:
    subscription = webhook_subscriptions.resume_subscription(session, subscription_id)
    session.flush()
    session.refresh(subscription)
    return _subscription(SubscriptionOut, subscription)


@router.get(
    "/deliveries/",
    response_model=DeliveryList,
    summary="List deliveries",
    description="Newest first, optionally filtered by status, subscription or request. Staff token.",
)
def list_deliveries(
    principal: AkinonStaff,
    session: DbSession,
    status: Annotated[DeliveryStatus | None, Query()] = None,
    subscription: Annotated[int | None, Query(gt=0, le=2**63 - 1)] = None,
    request: Annotated[int | None, Query(gt=0, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DeliveryList:
    results = [
        _delivery(d)
        for d in webhook_delivery.list_deliveries(
            session, status=status, subscription_id=subscription, request_id=request, limit=limit
        )
    ]
    return DeliveryList(count=len(results), results=results)


@router.get(
    "/deliveries/{delivery_id}/",
    response_model=DeliveryDetail,
    summary="Retrieve a delivery with its attempts",
    description="The stored payload and every attempt (status code, duration, error). Staff token.",
)
def get_delivery(delivery_id: Id, principal: AkinonStaff, session: DbSession) -> DeliveryDetail:
    delivery = webhook_delivery.get_delivery(session, delivery_id)
    attempts = [AttemptOut.model_validate(a) for a in webhook_delivery.list_attempts(session, delivery_id)]
    return DeliveryDetail(**_delivery(delivery).model_dump(), payload=delivery.payload, attempts=attempts)


@router.post(
    "/deliveries/{delivery_id}/redeliver/",
    response_model=DeliveryOut,
    status_code=202,
    summary="Redeliver by hand",
    description=(
        "Starts a new attempt cycle for the delivery (whatever its status) with the same event id, so a "
        "receiver that already has it can drop it. Staff token."
    ),
)
def redeliver(delivery_id: Id, principal: AkinonStaff, session: DbSession) -> DeliveryOut:
    delivery = webhook_delivery.redeliver(session, delivery_id)
    session.flush()
    session.refresh(delivery)
    return _delivery(delivery)
