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


class GatewayClient:
    """An authenticated client of the payment gateway's API, shared by refunds and bank transfers.

    Every money movement is a `POST` of a JSON body with an `Idempotency-Key`; the gateway answers with the
    movement's id and says in `Idempotent-Replayed` whether it had seen the key before.
    """

    def __init__(self, base_url: str | None = None, client: httpx.Client | None = None) -> None:
        settings = get_settings()
        self._base = (base_url or settings.payment_gateway_url).rstrip("/")
        self._client = client or httpx.Client(
            timeout=settings.http_timeout.total_seconds(),
            headers={"Authorization": f"Bearer {settings.payment_gateway_key.get_secret_value()}"},
        )

    def _post_movement(self, path: str, *, what: str, body: dict[str, str], idempotency_key: str) -> Movement:
        response = post_json(
            self._client,
            f"{self._base}{path}",
            what=what,
            content=json.dumps(body).encode(),
            headers={"Idempotency-Key": idempotency_key},
        )
        data = response.json()
        return Movement(
            external_id=storable(str(data["id"])),
            replayed=response.headers.get("Idempotent-Replayed") == "true",
        )


class HttpPaymentGateway(GatewayClient):
    """Stripe-style: `POST /refunds` with an `Idempotency-Key` the gateway remembers."""

    def refund(
        self, *, payment_reference: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> Movement:
        body = {"payment_reference": payment_reference, "amount": str(amount), "currency": currency}
        return self._post_movement("/refunds", what="refund", body=body, idempotency_key=idempotency_key)
