"""Bank transfers to the customer's IBAN, for payments that have no card to refund to."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Protocol, runtime_checkable

import httpx

from cancelflow.config import get_settings
from cancelflow.integrations.http import post_json
from cancelflow.integrations.payments import Movement
from cancelflow.textcheck import storable


@runtime_checkable
class BankTransfer(Protocol):
    def transfer(
        self, *, iban: str, holder_name: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> Movement: ...


class HttpBankTransfer:
    """`POST /transfers` with an `Idempotency-Key`, on the same gateway API as refunds."""

    def __init__(self, base_url: str | None = None, client: httpx.Client | None = None) -> None:
        settings = get_settings()
        self._base = (base_url or settings.payment_gateway_url).rstrip("/")
        self._client = client or httpx.Client(
            timeout=settings.http_timeout.total_seconds(),
            headers={"Authorization": f"Bearer {settings.payment_gateway_key.get_secret_value()}"},
        )

    def transfer(
        self, *, iban: str, holder_name: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> Movement:
        body = {"iban": iban, "holder_name": holder_name, "amount": str(amount), "currency": currency}
        response = post_json(
            self._client,
            f"{self._base}/transfers",
            what="bank transfer",
            content=json.dumps(body).encode(),
            headers={"Idempotency-Key": idempotency_key},
        )
        data = response.json()
        return Movement(
            external_id=storable(str(data["id"])),
            replayed=response.headers.get("Idempotent-Replayed") == "true",
        )
