"""Money arithmetic, refund targets and idempotency keys."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cancelflow.models.enums import PaymentMethod, RefundTarget
from cancelflow.services.money import money_key, plan_amount, refund_target

prices = st.decimals(min_value=Decimal("0"), max_value=Decimal("99999.99"), places=2)


@given(price=prices, quantity=st.integers(min_value=1, max_value=10_000))
def test_amount_is_exact_price_times_quantity(price: Decimal, quantity: int) -> None:
    amount = plan_amount(price, quantity)
    assert amount == price * quantity
    assert amount.as_tuple().exponent == -2


@given(price=prices, a=st.integers(min_value=1, max_value=500), b=st.integers(min_value=1, max_value=500))
def test_two_partial_cancellations_add_up_to_one(price: Decimal, a: int, b: int) -> None:
    assert plan_amount(price, a) + plan_amount(price, b) == plan_amount(price, a + b)


def test_amount_rounds_half_up_to_cents() -> None:
    assert plan_amount(Decimal("0.005"), 1) == Decimal("0.01")
    assert plan_amount(Decimal("19.99"), 3) == Decimal("59.97")


@pytest.mark.parametrize("quantity", [0, -1])
def test_amount_refuses_non_positive_quantity(quantity: int) -> None:
    with pytest.raises(ValueError, match="quantity"):
        plan_amount(Decimal("1.00"), quantity)


@pytest.mark.parametrize(
    ("loyalty", "method", "target"),
    [
        (True, PaymentMethod.card, RefundTarget.loyalty_money),
        (True, PaymentMethod.cash_on_delivery, RefundTarget.loyalty_money),
        (False, PaymentMethod.card, RefundTarget.original_payment),
        (False, PaymentMethod.cash_on_delivery, RefundTarget.bank_transfer),
        (False, PaymentMethod.bank_transfer, RefundTarget.bank_transfer),
    ],
)
def test_refund_target(loyalty: bool, method: PaymentMethod, target: RefundTarget) -> None:
    assert refund_target(loyalty=loyalty, payment_method=method) == target


def test_money_key_is_deterministic_per_plan_target_and_attempt_number() -> None:
    assert money_key(42, RefundTarget.original_payment) == "42:original_payment:1"
    assert money_key(42, RefundTarget.original_payment) == money_key(42, RefundTarget.original_payment)
    assert money_key(42, RefundTarget.bank_transfer, 2) == "42:bank_transfer:2"
