"""Refunds to the original payment through a payment gateway that honours idempotency keys."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, runtime_checkable

import httpx

from cancelflow.config import get_settings
from cancelflow.integrations.http import post_json
from cancelflow.textcheck import storable


@dataclass(frozen=True, slots=True)
class Movement:
    external_id: str
    replayed: bool


@runtime_checkable
class PaymentGateway(Protocol):
    def refund(
        self, *, payment_reference: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> Movement: ...


class HttpPaymentGateway:
    """Stripe-style: `POST /refunds` with an `Idempotency-Key` the gateway remembers."""

    def __init__(self, base_url: str | None = None, client: httpx.Client | None = None) -> None:
        settings = get_settings()
        self._base = (base_url or settings.payment_gateway_url).rstrip("/")
        self._client = client or httpx.Client(
            timeout=settings.http_timeout.total_seconds(),
            headers={"Authorization": f"Bearer {settings.payment_gateway_key.get_secret_value()}"},
        )

    def refund(
        self, *, payment_reference: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> Movement:
        body = {"payment_reference": payment_reference, "amount": str(amount), "currency": currency}
        response = post_json(
            self._client,
            f"{self._base}/refunds",
            what="refund",
            content=json.dumps(body).encode(),
            headers={"Idempotency-Key": idempotency_key},
        )
        data = response.json()
        return Movement(
            external_id=storable(str(data["id"])),
            replayed=response.headers.get("Idempotent-Replayed") == "true",
        )
