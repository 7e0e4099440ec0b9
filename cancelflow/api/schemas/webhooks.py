"""Bodies of the webhook routes (`api.webhooks`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from cancelflow.api.schemas.common import FromRow
from cancelflow.models import DeliveryStatus


class SubscriptionIn(BaseModel):
    url: str = Field(
        max_length=2000,
        description=(
            "Where events are POSTed (http or https). No credentials in the URL; the host must resolve to a "
            "public address unless the operator allowlisted it (`CANCELFLOW_OUTBOUND_ALLOW`). Query values "
            "are masked when the subscription is shown."
        ),
    )
    events: list[str] = Field(
        min_length=1,
        max_length=50,
        description='Event types such as `request.completed`, `plan.failed`, `plan.escalated`, or `"*"`.',
        json_schema_extra={"example": ["request.completed", "plan.failed"]},
    )
    channel: int | None = Field(
        default=None, gt=0, le=2**63 - 1, description="Only requests of this channel (default: all)."
    )


class SubscriptionOut(FromRow):
    # Validated from a `WebhookSubscription`; `api.webhooks` masks the URL's query values.

    id: int
    url: str = Field(description="The URL with its query values masked.")
    events: list[str]
    channel: int | None = Field(validation_alias="channel_id")
    is_active: bool
    status: Literal["active", "paused"] = Field(
        validation_alias="paused_at",
        description=(
            "`paused` after `CANCELFLOW_WEBHOOK_PAUSE_AFTER` failed attempts in a row: its deliveries wait "
            "until staff resume it (`POST /api/v1/webhooks/{id}/resume/`)."
        ),
    )
    consecutive_failures: int = Field(description="Failed attempts in a row; a delivered one resets it.")
    paused_at: datetime | None
    pause_reason: str | None = Field(description="How many attempts failed and the last short reason.")
    created_date: datetime
    modified_date: datetime

    @field_validator("status", mode="before")
    @classmethod
    def _paused_or_active(cls, value: Any) -> Any:
        """Read off `paused_at` (FastAPI's second validation passes the status itself)."""
        if value in ("active", "paused"):
            return value
        return "active" if value is None else "paused"


class SubscriptionCreated(SubscriptionOut):
    secret: str = Field(description="The HMAC signing key. Shown only in this response.")


class SubscriptionList(BaseModel):
    count: int
    results: list[SubscriptionOut]


class AttemptOut(FromRow):
    id: int
    attempted_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None = Field(
        description="A short reason (`http 500`, `unreachable`, `destination not allowed`), never the answer."
    )
    outcome: str


class DeliveryOut(FromRow):
    # Validated from a `WebhookDelivery`; `api.webhooks` sets `next_attempt_at` (`webhook_delivery.next_attempt`).

    id: int
    subscription: int = Field(validation_alias="subscription_id")
    event_id: uuid.UUID
    event_type: str
    request: int = Field(validation_alias="request_id")
    status: DeliveryStatus
    attempt: int
    next_attempt_at: datetime | None = Field(
        description="When a pending or failed delivery is tried next; null once delivered or dead."
    )
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_date: datetime
    modified_date: datetime


class DeliveryDetail(DeliveryOut):
    payload: dict[str, object]
    attempts: list[AttemptOut]


class DeliveryList(BaseModel):
    count: int
    results: list[DeliveryOut]
