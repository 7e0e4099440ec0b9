"""What the cancellation-request REST API does beyond intake: create (intake's rules, refused as a 400),
edit, approve by status, reject. `Idempotency-Key`s are kept by `services.idempotency`.

Every change runs under the order's row lock (the workflow's lock order: order, then request, plan,
fulfillment orders). A change the state machine forbids, or an edit of a money-relevant field after
approval, raises `InvalidTransition` (code `invalid_transition`) and changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NoReturn

from sqlalchemy import select
from sqlalchemy.orm import Session

from cancelflow.errors import Invalid, InvalidTransition, NotFound
from cancelflow.models import (
    CancellationReason,
    CancellationRequest,
    OrderItem,
    Payment,
)
from cancelflow.models.enums import (
    CancellationType,
    RejectionCode,
    RequestStatus,
)
from cancelflow.models.transitions import CLIENT_REQUEST_TARGETS, require
from cancelflow.services import approval, intake, locking, transitions
from cancelflow.services import iban as iban_checks

# Fields whose change would alter what is cancelled or where the money goes: frozen once approved.
MONEY_FIELDS: Final = (
    "order_item",
    "quantity",
    "iban",
    "holder_name",
    "fully_refund_as_loyalty_money",
    "cancellation_type",
)


def _refuse(message: str) -> InvalidTransition:
    return InvalidTransition(message)


def get_visible(session: Session, request_id: int, *, channel_id: int | None) -> CancellationRequest:
    """The request, if it exists and (with a channel scope) belongs to that channel; else NotFound."""
    request = session.get(CancellationRequest, request_id)
    if request is None or (channel_id is not None and request.channel_id != channel_id):
        raise NotFound(f"cancellation request {request_id} not found")
    return request


# --- create -----------------------------------------------------------------------------------------


def create(
    session: Session, data: Mapping[str, Any], *, client_request_id: str, channel_id: int | None
) -> tuple[CancellationRequest, bool]:
    """Create a request through intake's rules, refusing with 400 what intake would store as rejected.

    Returns (request, created); `created` is False when `client_request_id` was seen before.
    """
    message = intake.parse({**data, "client_request_id": client_request_id, "channel": channel_id})
    locked = intake.lock_item(session, message.order_item, reason_id=message.reason)
    if channel_id is not None and locked.order.channel_id != channel_id:
        raise Invalid(
            "order item of another channel",
            field_errors={"order_item": [f'Invalid pk "{locked.item.id}" - object does not exist.']},
        )
    result = intake.create(session, locked, message, refuse=_refuse_new)
    return result.request, result.created


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63


_BANK_ACCOUNT_NEEDED: Final = "A bank-transfer refund needs iban and holder_name."


def _refusal(rejection: intake.Rejection, *, remaining: int = 0) -> Invalid:
    """A rule's rejection as the API's 400, in the API's own words (`remaining`: still cancellable)."""
    if rejection.code == RejectionCode.quantity_exceeded:
        if remaining <= 0:
            return Invalid(
                "nothing left to cancel",
                field_errors={"order_item": ["Nothing is left to cancel on this order item."]},
            )
        return Invalid(
            "quantity too high",
            field_errors={"quantity": [f"Ensure this value is less than or equal to {remaining}."]},
        )
    if rejection.code == RejectionCode.invalid_iban:
        return Invalid("invalid IBAN", field_errors={"iban": [f"Enter a valid IBAN: {rejection.detail}."]})
    if rejection.code == RejectionCode.not_cancellable:
        return Invalid(
            "no payment to refund",
            field_errors={
                rejection.field: [
                    "The order has no payment to refund; only a loyalty-money refund is possible."
                ]
            },
        )
    return Invalid(
        "bank account needed",
        field_errors={"iban": [_BANK_ACCOUNT_NEEDED], "holder_name": [_BANK_ACCOUNT_NEEDED]},
    )


def _refuse_new(rejection: intake.Rejection, locked: intake.LockedItem) -> NoReturn:
    raise _refusal(rejection, remaining=locked.item.quantity - locked.item.requested_quantity)


def _check_refund_account(
    session: Session, *, order_id: int, iban: str | None, holder_name: str | None, loyalty: bool
) -> None:
    payment = session.scalars(select(Payment).where(Payment.order_id == order_id)).one_or_none()
    rejection = intake.check_refund_account(payment, iban=iban, holder_name=holder_name, loyalty=loyalty)
    if rejection is not None:
        raise _refusal(rejection)


# --- update -----------------------------------------------------------------------------------------


def update_request(
    session: Session, request_id: int, changes: Mapping[str, Any], *, actor: str, channel_id: int | None
) -> CancellationRequest:
    """Apply a PUT/PATCH: field edits first, then a status change (approve or reject)."""
    request = get_visible(session, request_id, channel_id=channel_id)
    locking.lock_order(session, request.order_id)
    session.refresh(request)
    target = changes.get("status")
    target_status = RequestStatus(target) if target is not None else None
    if target_status is not None and target_status != request.status:
        refused = f"Cannot change status from {request.status.value} to {target_status.value}."
        require("request", request.status, target_status, message=refused)
        if target_status not in CLIENT_REQUEST_TARGETS:
            raise _refuse(f"{refused} Requests complete with their plan.")
    _edit(session, request, {k: v for k, v in changes.items() if k != "status"})
    if target_status == RequestStatus.approved and request.status != target_status:
        approval.approve(session, request, actor=actor)
    elif target_status == RequestStatus.rejected and request.status != target_status:
        reject(session, request.id, actor=actor, channel_id=channel_id)
    session.flush()
    session.refresh(request)
    return request


def _current(request: CancellationRequest, name: str) -> Any:
    return {
        "order_item": request.order_item_id,
        "reason": request.reason_id,
    }.get(name, getattr(request, name, None))


def _edit(session: Session, request: CancellationRequest, changes: Mapping[str, Any]) -> None:
    if "iban" in changes and changes["iban"] is not None:
        if request.iban and changes["iban"] == iban_checks.mask(request.iban):
            # A client echoing the masked IBAN it was shown back (read-modify-write) changes nothing.
            changes = {k: v for k, v in changes.items() if k != "iban"}
        else:
            changes = {**changes, "iban": iban_checks.normalise(changes["iban"]) or None}
    if "holder_name" in changes and changes["holder_name"] is not None:
        changes = {**changes, "holder_name": changes["holder_name"].strip() or None}
    changed = {k: v for k, v in changes.items() if v != _current(request, k)}
    if not changed:
        return
    frozen = [name for name in MONEY_FIELDS if name in changed]
    if frozen and request.status != RequestStatus.waiting:
        raise _refuse(
            f"Cannot change {', '.join(frozen)} of a request that is {request.status.value}; "
            "only a waiting request can be edited."
        )
    if "reason" in changed:
        reason = session.get(CancellationReason, changed["reason"]) if _is_id(changed["reason"]) else None
        if reason is None or not reason.is_active:
            raise Invalid(
                "unknown reason",
                field_errors={"reason": [f'Invalid pk "{changed["reason"]}" - object does not exist.']},
            )
        request.reason_id = reason.id
    if "description" in changed:
        request.description = changed["description"]
    if frozen:
        _edit_money_fields(session, request, changed)
    transitions.record_event(
        session,
        "request",
        request.id,
        "request.edited",
        data={"fields": sorted(changed)},  # names only: values may be IBANs
    )
    request.version += 1
    session.flush()


def _edit_money_fields(session: Session, request: CancellationRequest, changed: Mapping[str, Any]) -> None:
    old_item = session.get_one(OrderItem, request.order_item_id)
    new_item = old_item
    if "order_item" in changed:
        candidate = session.get(OrderItem, changed["order_item"]) if _is_id(changed["order_item"]) else None
        if candidate is None or candidate.order_id != request.order_id:
            raise Invalid(
                "order item of another order",
                field_errors={
                    "order_item": ["Must be an item of the same order as the request's current item."]
                },
            )
        new_item = candidate
    quantity = changed.get("quantity", request.quantity)
    if quantity is None:
        raise Invalid("quantity required", field_errors={"quantity": ["This field may not be null."]})
    iban = changed.get("iban", request.iban)
    holder = changed.get("holder_name", request.holder_name)
    loyalty = changed.get("fully_refund_as_loyalty_money", request.fully_refund_as_loyalty_money)
    _check_refund_account(session, order_id=request.order_id, iban=iban, holder_name=holder, loyalty=loyalty)
    if new_item.id != old_item.id or quantity != request.quantity:
        # Give back the old reservation, then take the new one under the same guard intake uses.
        intake.release_quantity(session, old_item.id, request.quantity)
        if not intake.reserve_quantity(session, new_item.id, quantity):
            session.refresh(new_item)
            remaining = new_item.quantity - new_item.requested_quantity
            raise Invalid(
                "quantity too high",
                field_errors={"quantity": [f"Ensure this value is less than or equal to {remaining}."]},
            )
    request.order_item_id = new_item.id
    request.quantity = quantity
    request.iban = iban
    request.holder_name = holder
    request.fully_refund_as_loyalty_money = loyalty
    if "cancellation_type" in changed:
        request.cancellation_type = CancellationType(changed["cancellation_type"])


# --- reject -----------------------------------------------------------------------------------------


def reject(
    session: Session,
    request_id: int,
    *,
    actor: str,
    channel_id: int | None,
    message: str | None = None,
) -> CancellationRequest:
    """Staff reject: stop the plan (pending steps cancelled, open fulfillment requests withdrawn) and end
    the request `rejected`, giving its quantity back to the order item."""
    request = get_visible(session, request_id, channel_id=channel_id)
    locking.lock_order(session, request.order_id)
    session.refresh(request)
    plan = locking.plan_of(session, request.id)
    if plan is not None:
        session.refresh(plan, with_for_update=True)
    approval.reject_plan(
        session,
        request,
        plan,
        actor=actor,
        code=RejectionCode.staff_rejected,
        message=message or f"rejected by {actor}",
    )
    session.flush()
    return request
