"""Intake: turn a storefront's cancellation message into a request, once per client_request_id.

A message that cannot name a real order item or reason stores no request and raises `Invalid`; the caller
logs it and keeps the refusal with `record_rejection` (a `rejected_messages` row by client_request_id). A
message about a real item that breaks a business rule (too many items, a bad IBAN, no bank account for a bank
refund) is stored as a `rejected` request with a machine-readable code. Either way the storefront can see why.

These rules are the only ones a new request meets (`check_new`): the REST API creates through `create` too,
under the same single order lock, and turns a rejection into a 400 instead of storing it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final, NoReturn

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from sqlalchemy import DateTime, Integer, bindparam, delete, func, select, update
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


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a new request breaks a business rule: a machine-readable code, the field at fault, and the
    sentence a storefront is shown. `detail` is the fact behind it (the IBAN's problem), for an entry point
    that words the refusal its own way."""

    code: RejectionCode
    field: str
    message: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class LockedItem:
    """An order item with its order (row-locked) and payment, as one creation sees them, and the reason the
    creation names (None: no such reason)."""

    item: OrderItem
    order: Order
    payment: Payment | None
    reason: CancellationReason | None


def lock_item(session: Session, item_id: int, *, reason_id: int) -> LockedItem:
    """Take the order lock for a new request on `item_id`: the item, its order and the payment come with
    it in one round trip, and so does the cancellation reason `reason_id`. Every change to an order's
    requests and plans holds this row lock."""
    row = session.execute(_ITEM_LOCKED, {"item_id": item_id, "reason_id": reason_id}).one_or_none()
    if row is None:
        raise Invalid(
            "unknown order item",
            field_errors={"order_item": ["non-existent object"]},
            code="unknown_order_item",
        )
    item, order, payment, reason = row
    return LockedItem(item, order, payment, reason)


def reserve_quantity(session: Session, item_id: int, quantity: int) -> bool:
    """Hold `quantity` of the item for an active request; False (nothing held) when that is above what is
    left. The CHECK constraint and this guard keep the active requests of an item <= what was ordered."""
    held = session.execute(
        update(OrderItem)
        .where(OrderItem.id == item_id, OrderItem.requested_quantity + quantity <= OrderItem.quantity)
        .values(requested_quantity=OrderItem.requested_quantity + quantity)
    ).rowcount  # type: ignore[attr-defined]
    return bool(held)


def release_quantity(session: Session, item_id: int, quantity: int) -> None:
    """Give back what `reserve_quantity` held for a request that is no longer active (or moves)."""
    session.execute(
        update(OrderItem)
        .where(OrderItem.id == item_id)
        .values(requested_quantity=OrderItem.requested_quantity - quantity)
    )


def check_new(
    locked: LockedItem, *, quantity: int | None, iban: str | None, holder_name: str | None, loyalty: bool
) -> Rejection | None:
    """The business rules of a new request on a locked item: what is left to cancel, then the refund
    account. None when the request may be created."""
    remaining = locked.item.quantity - locked.item.requested_quantity
    if remaining <= 0 or (quantity is not None and quantity > remaining):
        return Rejection(
            RejectionCode.quantity_exceeded,
            "order_item" if remaining <= 0 else "quantity",
            "nothing left to cancel on this order item"
            if quantity is None
            else "quantity is above what is still cancellable",
        )
    return check_refund_account(locked.payment, iban=iban, holder_name=holder_name, loyalty=loyalty)


def check_refund_account(
    payment: Payment | None, *, iban: str | None, holder_name: str | None, loyalty: bool
) -> Rejection | None:
    """Where the money would go: a valid IBAN if one is given (None: not given), a bank account for a
    bank-transfer refund, a payment to refund unless the refund is loyalty money."""
    if iban is not None and (problem := iban_checks.validate(iban)) is not None:
        return Rejection(RejectionCode.invalid_iban, "iban", f"IBAN is invalid: {problem}", detail=problem)
    if payment is None:
        if loyalty:
            return None
        return Rejection(
            RejectionCode.not_cancellable,
            "fully_refund_as_loyalty_money",
            "the order has no payment to refund",
        )
    if refund_target(loyalty=loyalty, payment_method=payment.method) == RefundTarget.bank_transfer and (
        not iban or not (holder_name or "").strip()
    ):
        return Rejection(
            RejectionCode.missing_bank_account, "iban", "a bank-transfer refund needs iban and holder_name"
        )
    return None


Refuse = Callable[[Rejection, LockedItem], NoReturn]


def submit(session: Session, raw: Mapping[str, Any]) -> IntakeResult:
    """Create the request (waiting or rejected) once per client_request_id."""
    message = parse(raw)
    return create(session, lock_item(session, message.order_item, reason_id=message.reason), message)


def create(
    session: Session, locked: LockedItem, message: SubmitMessage, *, refuse: Refuse | None = None
) -> IntakeResult:
    """Create the request for `message` on an item whose order this transaction has locked.

    A request that breaks a business rule is stored `rejected` with its code; with `refuse`, that function
    is called instead (it raises) and nothing is stored.
    """
    existing = _by_client_id(session, message.client_request_id)  # a repeat, or a twin that won the lock
    if existing is not None:
        return IntakeResult(existing, created=False)
    reason = locked.reason  # read with the order lock (`lock_item`)
    if reason is None or reason.id != message.reason:
        reason = session.get(CancellationReason, message.reason)
    if reason is None or not reason.is_active:
        raise Invalid(
            "unknown cancellation reason",
            field_errors={"reason": ["non-existent object"]},
            code="unknown_reason",
        )
    item, order = locked.item, locked.order
    if message.channel is not None and message.channel != order.channel_id:
        raise Invalid(
            "order item belongs to another channel",
            field_errors={"channel": ["does not match order"]},
            code="channel_mismatch",
        )

    iban = iban_checks.normalise(message.iban) if message.iban else None
    holder = message.holder_name.strip() if message.holder_name else None
    rejection = check_new(
        locked,
        quantity=message.quantity,
        iban=iban,
        holder_name=holder,
        loyalty=message.fully_refund_as_loyalty_money,
    )
    quantity = message.quantity if message.quantity is not None else item.quantity - item.requested_quantity
    if rejection is None and not reserve_quantity(session, item.id, quantity):
        rejection = Rejection(
            RejectionCode.quantity_exceeded, "quantity", "quantity is above what is still cancellable"
        )
    if rejection is not None and refuse is not None:
        refuse(rejection, locked)
    if rejection is not None:
        if quantity <= 0:
            quantity = item.quantity  # recorded as asked: the whole item
        if rejection.code == RejectionCode.invalid_iban:
            iban = None

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
        rejection_code=rejection.code.value if rejection else None,
        rejection_message=rejection.message if rejection else None,
        attributes={},
    )
    session.add(request)
    session.flush()
    created = transitions.event_row(
        "request",
        request.id,
        "request.created",
        to_status=request.status.value,
        data={"client_request_id": message.client_request_id, "rejection_code": request.rejection_code},
    )
    if rejection is None:
        # The event row goes with the validate step's insert: one round trip for both.
        steps.create(
            session,
            request_id=request.id,
            kind=StepKind.validate,
            idempotency_key=f"request:{request.id}:validate:1",
            event=created,
        )
    else:
        transitions.write_event(session, created)
        log.info(
            "cancellation request %s rejected at intake: %s",
            message.client_request_id,
            rejection.code.value,
        )
    return IntakeResult(request, created=True)


_ITEM_LOCKED = (
    select(OrderItem, Order, Payment, CancellationReason)
    .join(Order, Order.id == OrderItem.order_id)
    .outerjoin(Payment, Payment.order_id == Order.id)
    # The reason is read per request (staff may deactivate it), not locked.
    .outerjoin(CancellationReason, CancellationReason.id == bindparam("reason_id"))
    .where(OrderItem.id == bindparam("item_id"))
    .with_for_update(of=Order)
    # What was read before the lock (an earlier statement of this transaction) is refreshed under it.
    .execution_options(populate_existing=True)
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
        "errors": {
            textcheck.storable(f): [textcheck.storable(m) for m in msgs] for f, msgs in errors.items()
        },
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


# Built once: the prune runs every tick, and building and keying the statement cost more than running it.
_PRUNE: Final = (
    delete(RejectedMessage)
    .where(
        RejectedMessage.id.in_(
            select(RejectedMessage.id)
            .where(RejectedMessage.rejected_at < bindparam("older_than", type_=DateTime(timezone=True)))
            .order_by(RejectedMessage.rejected_at)
            .limit(bindparam("batch", type_=Integer()))
        )
    )
    .returning(RejectedMessage.id)
)


def prune_rejections(session: Session, *, older_than: datetime, batch: int = 5000) -> int:
    """Delete up to `batch` refusals recorded before `older_than` (oldest first); how many went."""
    return len(session.scalars(_PRUNE, {"older_than": older_than, "batch": batch}).all())


def rejection_since(session: Session, client_request_id: str, since: Any) -> RejectedMessage | None:
    """The refusal of this client_request_id recorded at or after `since` (a database timestamp), if any."""
    return session.scalars(
        select(RejectedMessage).where(
            RejectedMessage.client_request_id == client_request_id, RejectedMessage.rejected_at >= since
        )
    ).one_or_none()
