"""Money arithmetic and refund-target choice. Decimal only; amounts are quantized to cents."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from cancelflow.models.enums import PaymentMethod, RefundTarget, StepKind

CENT = Decimal("0.01")

STEP_FOR_TARGET = {
    RefundTarget.original_payment: StepKind.refund,
    RefundTarget.bank_transfer: StepKind.bank_transfer,
    RefundTarget.loyalty_money: StepKind.loyalty_credit,
}


def plan_amount(unit_price: Decimal, quantity: int) -> Decimal:
    """Paid unit price (after discounts) times the quantity cancelled."""
    if quantity <= 0:
        raise ValueError("quantity must be positive")
    if unit_price < 0:
        raise ValueError("unit price cannot be negative")
    return (unit_price * quantity).quantize(CENT, rounding=ROUND_HALF_UP)


def refund_target(*, loyalty: bool, payment_method: PaymentMethod) -> RefundTarget:
    """Loyalty flag first; then a card goes back to the card; anything else by bank transfer."""
    if loyalty:
        return RefundTarget.loyalty_money
    if payment_method == PaymentMethod.card:
        return RefundTarget.original_payment
    return RefundTarget.bank_transfer


def money_key(plan_id: int, target: RefundTarget, n: int = 1) -> str:
    """The deterministic idempotency key of the n-th movement of a plan to a target."""
    return f"{plan_id}:{target.value}:{n}"


def is_money_key(key: str, plan_id: int, target: RefundTarget) -> bool:
    """Whether `key` is one of `money_key(plan_id, target, n)`."""
    head, _, n = key.rpartition(":")
    return head == f"{plan_id}:{target.value}" and n.isdigit() and n == str(int(n))
