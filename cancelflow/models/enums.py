"""Every enumerated value the service stores or exposes; stored by value."""

from __future__ import annotations

from enum import StrEnum


class CancellationType(StrEnum):
    cancel = "cancel"
    refund = "refund"


class RequestStatus(StrEnum):
    """Akinon `CancellationRequest.status`."""

    waiting = "waiting"
    approved = "approved"
    rejected = "rejected"
    completed = "completed"


class PlanStatus(StrEnum):
    """Akinon `plan_status`, plus `failed` for plans that need an operator."""

    waiting = "waiting"
    confirmation_waiting = "confirmation_waiting"
    confirmed = "confirmed"
    waiting_for_payment = "waiting_for_payment"
    completed = "completed"
    rejected = "rejected"
    failed = "failed"


class StepKind(StrEnum):
    validate = "validate"
    route = "route"
    notify = "notify"
    refund = "refund"
    bank_transfer = "bank_transfer"
    loyalty_credit = "loyalty_credit"
    close = "close"


class StepStatus(StrEnum):
    pending = "pending"
    done = "done"
    dead = "dead"
    cancelled = "cancelled"


class PaymentMethod(StrEnum):
    card = "card"
    cash_on_delivery = "cash_on_delivery"
    bank_transfer = "bank_transfer"


class RefundTarget(StrEnum):
    original_payment = "original_payment"
    bank_transfer = "bank_transfer"
    loyalty_money = "loyalty_money"


class FORequestStatus(StrEnum):
    """Shopify fulfillment-order `request_status`."""

    unsubmitted = "unsubmitted"
    submitted = "submitted"
    accepted = "accepted"
    rejected = "rejected"
    cancellation_requested = "cancellation_requested"
    cancellation_accepted = "cancellation_accepted"
    cancellation_rejected = "cancellation_rejected"
    closed = "closed"


class FOStatus(StrEnum):
    """Shopify fulfillment-order `status`."""

    open = "open"
    in_progress = "in_progress"
    cancelled = "cancelled"
    incomplete = "incomplete"
    closed = "closed"
    scheduled = "scheduled"
    on_hold = "on_hold"


class MerchantRequestKind(StrEnum):
    fulfillment_request = "fulfillment_request"
    cancellation_request = "cancellation_request"


class TokenKind(StrEnum):
    staff = "staff"
    storefront = "storefront"
    fulfillment_service = "fulfillment_service"


class RejectionCode(StrEnum):
    """Machine-readable reasons a request ends `rejected`."""

    quantity_exceeded = "quantity_exceeded"
    invalid_quantity = "invalid_quantity"
    invalid_iban = "invalid_iban"
    missing_bank_account = "missing_bank_account"
    unknown_reason = "unknown_reason"
    not_cancellable = "not_cancellable"
    fulfillment_rejected = "fulfillment_rejected"
    staff_rejected = "staff_rejected"
