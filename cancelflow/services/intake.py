"""Intake: turn a storefront's cancellation message into a request, once per client_request_id.

A message that cannot name a real order item or reason stores no request and raises `Invalid`; the caller
logs it and keeps the refusal with `record_rejection` (a `rejected_messages` row by client_request_id). A
message about a real item that breaks a business rule (too many items, a bad IBAN, no bank account for a bank
refund) is stored as a `rejected` request with a machine-readable code. Either way the storefront can see why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from cancelflow import textcheck
from cancelflow.errors import Invalid
from cancelflow.models import (
    CancellationReason,
    CancellationRequest,
    Order,
    OrderItem,
    Payment,
    RejectedMessage,
)
from cancelflow.models.enums import CancellationType, RefundTarget, RejectionCode, RequestStatus, StepKind
from cancelflow.services import iban as iban_checks
from cancelflow.services import steps, transitions
from cancelflow.services.money import refund_target

log = logging.getLogger(__name__)

ClientId = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]


class SubmitMessage(BaseModel):
    """The `cancellations.submit` message: the wire contract any storefront can publish."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    client_request_id: ClientId
    order_item: int = Field(gt=0)
    quantity: int | None = Field(default=None, gt=0, le=1_000_000)
    reason: int = Field(gt=0)
    cancellation_type: CancellationType = CancellationType.cancel
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    iban: Annotated[str, StringConstraints(max_length=64)] | None = None
    holder_name: Annotated[str, StringConstraints(max_length=200)] | None = None
    fully_refund_as_loyalty_money: bool = False
    channel: int | None = Field(default=None, gt=0)


@dataclass(frozen=True, slots=True)
class IntakeResult:
    request: CancellationRequest
    created: bool


def parse(raw: Mapping[str, Any]) -> SubmitMessage:
    """Validate the message shape; raise Invalid with per-field errors."""
    # Before anything reads it: text PostgreSQL cannot store (NUL, lone surrogates) is a malformed message.
    textcheck.refuse(raw, message="malformed cancellation message", code="invalid_message")
    try:
        # JSON mode: enum values arrive as strings from any language's publisher.
        return SubmitMessage.model_validate_json(_to_json(raw))
    except ValidationError as exc:
        errors: dict[str, list[str]] = {}
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "non_field_errors"
            errors.setdefault(field, []).append(err["msg"])
        raise Invalid("malformed cancellation message", field_errors=errors, code="invalid_message") from exc


def _to_json(raw: Mapping[str, Any]) -> str:
    import json

    try:
        return json.dumps(dict(raw))
    except (TypeError, ValueError) as exc:
        raise Invalid("message is not JSON-serialisable", code="invalid_message") from exc


def submit(session: Session, raw: Mapping[str, Any]) -> IntakeResult:
    """Create the request (waiting or rejected) once per client_request_id."""
    message = parse(raw)
    # One order at a time: every change to an order's requests and plans holds this row lock. The item,
    # its order and the payment come with the lock, in one round trip.
    row = session.execute(_ITEM_LOCKED, {"item_id": message.order_item}).one_or_none()
    if row is None:
        raise Invalid(
            "unknown order item",
            field_errors={"order_item": ["non-existent object"]},
            code="unknown_order_item",
        )
    item, order, payment = row
    existing = _by_client_id(session, message.client_request_id)  # a repeat, or a twin that won the lock
    if existing is not None:
        return IntakeResult(existing, created=False)
    reason = session.get(CancellationReason, message.reason)
    if reason is None or not reason.is_active:
        raise Invalid(
            "unknown cancellation reason",
            field_errors={"reason": ["non-existent object"]},
            code="unknown_reason",
        )
    if message.channel is not None and message.channel != order.channel_id:
        raise Invalid(
            "order item belongs to another channel",
            field_errors={"channel": ["does not match order"]},
            code="channel_mismatch",
        )

    quantity = message.quantity if message.quantity is not None else item.quantity - item.requested_quantity
    iban = iban_checks.normalise(message.iban) if message.iban else None
    holder = message.holder_name.strip() if message.holder_name else None

    rejection: tuple[RejectionCode, str] | None = None
    if quantity <= 0:
        rejection = (RejectionCode.quantity_exceeded, "nothing left to cancel on this order item")
        quantity = item.quantity  # recorded as asked: the whole item
    elif iban is not None and (problem := iban_checks.validate(iban)) is not None:
        rejection = (RejectionCode.invalid_iban, f"IBAN is invalid: {problem}")
        iban = None
    elif (
        payment is not None
        and refund_target(loyalty=message.fully_refund_as_loyalty_money, payment_method=payment.method)
        == RefundTarget.bank_transfer
        and (iban is None or not holder)
    ):
        rejection = (RejectionCode.missing_bank_account, "a bank-transfer refund needs iban and holder_name")
    elif payment is None and not message.fully_refund_as_loyalty_money:
        rejection = (RejectionCode.not_cancellable, "the order has no payment to refund")

    if rejection is None:
        # Reserve the quantity; the CHECK constraint and this guard keep active requests <= ordered.
        reserved = session.execute(
            update(OrderItem)
            .where(OrderItem.id == item.id, OrderItem.requested_quantity + quantity <= OrderItem.quantity)
            .values(requested_quantity=OrderItem.requested_quantity + quantity)
        ).rowcount  # type: ignore[attr-defined]
        if not reserved:
            rejection = (RejectionCode.quantity_exceeded, "quantity is above what is still cancellable")

    request = CancellationRequest(
        order_item_id=item.id,
        order_id=order.id,
        channel_id=order.channel_id,
        reason_id=reason.id,
        description=message.description,
        cancellation_type=message.cancellation_type,
        status=RequestStatus.rejected if rejection else RequestStatus.waiting,
        iban=iban,
        holder_name=holder,
        quantity=quantity,
        fully_refund_as_loyalty_money=message.fully_refund_as_loyalty_money,
        client_request_id=message.client_request_id,
        rejection_code=rejection[0].value if rejection else None,
        rejection_message=rejection[1] if rejection else None,
        attributes={},
    )
    session.add(request)
    session.flush()
    transitions.record_event(
        session,
        "request",
        request.id,
        "request.created",
        to_status=request.status.value,
        data={"client_request_id": message.client_request_id, "rejection_code": request.rejection_code},
    )
    if rejection is None:
        steps.create(
            session,
            request_id=request.id,
            kind=StepKind.validate,
            idempotency_key=f"request:{request.id}:validate:1",
        )
    else:
        log.info(
            "cancellation request %s rejected at intake: %s",
            message.client_request_id,
            rejection[0].value,
        )
    return IntakeResult(request, created=True)


_ITEM_LOCKED = (
    select(OrderItem, Order, Payment)
    .join(Order, Order.id == OrderItem.order_id)
    .outerjoin(Payment, Payment.order_id == Order.id)
    .where(OrderItem.id == bindparam("item_id"))
    .with_for_update(of=Order)
)
_BY_CLIENT_ID = select(CancellationRequest).where(
    CancellationRequest.client_request_id == bindparam("client_request_id")
)


def _by_client_id(session: Session, client_request_id: str) -> CancellationRequest | None:
    return session.scalars(_BY_CLIENT_ID, {"client_request_id": client_request_id}).one_or_none()


def record_rejection(
    session: Session, raw: Mapping[str, Any], *, code: str, message: str, errors: Mapping[str, list[str]]
) -> RejectedMessage | None:
    """Keep why a message was refused before it became a request, under its client_request_id.

    None when the message has no usable client_request_id (nothing to find it by: the log has it).
    """
    client_request_id = raw.get("client_request_id")
    if not isinstance(client_request_id, str):
        return None
    key = client_request_id.strip()
    if not 1 <= len(key) <= 200 or textcheck.storable(key) != key:
        return None
    values = {
        "client_request_id": key,
        "code": textcheck.storable(code)[:60],
        "message": textcheck.storable(message),
        "errors": {textcheck.storable(f): [textcheck.storable(m) for m in msgs] for f, msgs in errors.items()},
        "times": 1,
    }
    stmt = insert(RejectedMessage).values(values)
    upsert = stmt.on_conflict_do_update(
        index_elements=["client_request_id"],
        set_={
            "code": stmt.excluded.code,
            "message": stmt.excluded.message,
            "errors": stmt.excluded.errors,
            "times": RejectedMessage.times + 1,
            "rejected_at": func.now(),
        },
    ).returning(RejectedMessage)
    row: RejectedMessage = session.scalars(upsert).one()
    return row


def rejection_since(session: Session, client_request_id: str, since: Any) -> RejectedMessage | None:
    """The refusal of this client_request_id recorded at or after `since` (a database timestamp), if any."""
    return session.scalars(
        select(RejectedMessage).where(
            RejectedMessage.client_request_id == client_request_id, RejectedMessage.rejected_at >= since
        )
    ).one_or_none()
