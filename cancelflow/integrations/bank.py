"""Bank transfers to the customer's IBAN, for payments that have no card to refund to."""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol, runtime_checkable

from cancelflow.integrations.payments import GatewayClient, Movement


@runtime_checkable
class BankTransfer(Protocol):
    def transfer(
        self, *, iban: str, holder_name: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> Movement: ...


class HttpBankTransfer(GatewayClient):
    """`POST /transfers` with an `Idempotency-Key`, on the same gateway API as refunds."""

    def transfer(
        self, *, iban: str, holder_name: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> Movement:
        body = {"iban": iban, "holder_name": holder_name, "amount": str(amount), "currency": currency}
        return self._post_movement(
            "/transfers", what="bank transfer", body=body, idempotency_key=idempotency_key
        )
