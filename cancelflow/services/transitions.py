"""The one mutator of every status: ask the machine (`models.transitions.require`), compare-and-set, append an
event.

`UPDATE … SET status=:to, version=version+1 WHERE id=:id AND status=:from` in the caller's transaction,
plus an `events` row. A rowcount of 0 means another transaction moved the row first: we return False and
the caller stops (it is someone else's work now).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import CTE, Executable, String, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.selectable import HasCTE

from cancelflow.models import CancellationPlan, CancellationRequest, Event, FulfillmentOrder, WorkflowStep
from cancelflow.models.base import table_of
from cancelflow.models.enums import FORequestStatus, FOStatus, PlanStatus, RequestStatus, StepStatus
from cancelflow.models.transitions import (
    ESCALATING,
    EscalationState,
    InvalidTransition,
    escalation_of,
    require,
)
from cancelflow.services.clock import now
from cancelflow.services.webhooks import outbox as webhook_outbox

log = logging.getLogger(__name__)

_S = TypeVar("_S", bound=HasCTE)

Stateful = CancellationRequest | CancellationPlan | WorkflowStep

_MACHINES: dict[type[Any], str] = {
    CancellationRequest: "request",
    CancellationPlan: "plan",
    WorkflowStep: "step",
}


_EVENTS = table_of(Event)
_EVENT_COLUMNS = ("entity", "entity_id", "kind", "from_status", "to_status", "data")
# Statements built once per (model, extra columns): building a statement costs more than running it.
_MOVE_STATEMENTS: dict[tuple[type[Any], tuple[str, ...], bool], Executable] = {}


def record_event(
    session: Session,
    entity: str,
    entity_id: int,
    kind: str,
    *,
    from_status: str | None = None,
    to_status: str | None = None,
    data: Mapping[str, object] | None = None,
) -> None:
    # Core on the session's connection: an event is never read back in the transaction that writes it.
    write_event(
        session, event_row(entity, entity_id, kind, from_status=from_status, to_status=to_status, data=data)
    )


# An event row carried by another statement, as a CTE: `carrying_event(stmt)` executed with `event_row(...)`'s
# parameters writes the event in the same round trip (a data-modifying CTE runs whatever the statement returns).
_INSERT_EVENT_ROW = insert(_EVENTS).values(
    # created_date spelled out (its server default): a nested INSERT given no value for a column the outer
    # statement's parameters name (`created_date` of a step) would expect a parameter for it.
    {**{c: bindparam(f"_event_{c}") for c in _EVENT_COLUMNS}, "created_date": func.now()}
)
_CARRIED_EVENT = _INSERT_EVENT_ROW.cte("carried_event")


def event_row(
    entity: str,
    entity_id: int,
    kind: str,
    *,
    from_status: str | None = None,
    to_status: str | None = None,
    data: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The parameters of an event row for a statement built with `carrying_event`."""
    return {
        "_event_entity": entity,
        "_event_entity_id": entity_id,
        "_event_kind": kind,
        "_event_from_status": from_status,
        "_event_to_status": to_status,
        "_event_data": dict(data or {}),
    }


def write_event(session: Session, row: Mapping[str, object]) -> None:
    """Write an `event_row` on its own (the path where no statement carries it)."""
    session.connection().execute(_INSERT_EVENT_ROW, dict(row))


def carrying_event(stmt: _S) -> _S:
    """`stmt` with an event row written in the same round trip (parameters from `event_row`)."""
    return stmt.add_cte(_CARRIED_EVENT)


def _with_event(moved: CTE, *returning: Any) -> Executable:
    """INSERT the event row for what the `moved` CTE (an UPDATE … RETURNING id) changed."""
    source = select(
        bindparam("_entity", type_=String),
        moved.c.id,
        bindparam("_kind", type_=String),
        bindparam("_from", type_=String),
        bindparam("_to", type_=String),
        bindparam("_data", type_=JSONB),
    )
    return (
        insert(_EVENTS)
        .from_select(list(_EVENT_COLUMNS), source)
        .add_cte(moved)
        .returning(_EVENTS.c.id, *returning)
    )


def _move_statement(model: type[Any], columns: tuple[str, ...], watched: bool) -> Executable:
    """UPDATE … WHERE status = :from RETURNING id, and the event row inserted from what it returned.

    One round trip per transition. For webhook machines the statement also says whether any active
    subscription listens for the event, so the outbox is only looked at when somebody does.
    """
    key = (model, columns, watched)
    stmt = _MOVE_STATEMENTS.get(key)
    if stmt is not None:
        return stmt
    table = model.__table__
    moved = (
        update(table)
        .where(table.c.id == bindparam("_id"), table.c.status == bindparam("_from_value"))
        .values(
            status=bindparam("_to_value"),
            version=table.c.version + 1,
            modified_date=bindparam("_stamp"),
            **{name: bindparam(name) for name in columns},
        )
        .returning(table.c.id)
        .cte("moved")
    )
    listened = webhook_outbox.listening(bindparam("_kind", type_=String)).label("listened")
    stmt = _with_event(moved, *([listened] if watched else []))
    _MOVE_STATEMENTS[key] = stmt
    return stmt


def move(
    session: Session,
    obj: Stateful,
    to: StrEnum,
    *,
    data: Mapping[str, object] | None = None,
    **values: object,
) -> bool:
    """Move `obj` to status `to` (setting `values` with it) if nobody moved it first."""
    machine = _MACHINES[type(obj)]
    current = obj.status
    require(machine, current, to)
    model = type(obj)
    stamp = now()
    watched = machine in webhook_outbox.MACHINES
    kind = f"{machine}.{to.value}"
    row = (
        session.connection()
        .execute(
            _move_statement(model, tuple(sorted(values)), watched),
            {
                "_id": obj.id,
                "_from_value": current,
                "_to_value": to,
                "_stamp": stamp,
                "_entity": machine,
                "_kind": kind,
                "_from": current.value,
                "_to": to.value,
                "_data": dict(data or {}),
                **values,
            },
        )
        .first()
    )
    if row is None:
        log.info("%s %s moved by someone else; leaving %s -> %s", machine, obj.id, current, to)
        return False
    set_committed_value(obj, "status", to)
    set_committed_value(obj, "version", obj.version + 1)
    set_committed_value(obj, "modified_date", stamp)
    for name, value in values.items():
        set_committed_value(obj, name, value)
    if watched and row.listened:
        # The outbox row for subscribed storefronts commits (or rolls back) with the change itself.
        webhook_outbox.on_transition(session, machine, obj, current, to)
    return True


_FOS = table_of(FulfillmentOrder)


def _move_fulfillment_order_statement(*, with_plan: bool) -> Executable:
    return _with_event(
        update(_FOS)
        .where(
            _FOS.c.id == bindparam("_id"),
            _FOS.c.request_status == bindparam("_from_request"),
            _FOS.c.status == bindparam("_from_status"),
        )
        .values(
            request_status=bindparam("_to_request"),
            status=bindparam("_to_status"),
            version=_FOS.c.version + 1,
            modified_date=bindparam("_stamp"),
            **({"cancellation_plan_id": bindparam("_plan_id")} if with_plan else {}),
        )
        .returning(_FOS.c.id)
        .cte("moved")
    )


_MOVE_FULFILLMENT_ORDER = _move_fulfillment_order_statement(with_plan=False)
# The same, also giving the fulfillment order to a cancellation plan (routing does both at once).
_MOVE_FULFILLMENT_ORDER_TO_PLAN = _move_fulfillment_order_statement(with_plan=True)


def move_fulfillment_order(
    session: Session,
    fo: FulfillmentOrder,
    *,
    request_status: FORequestStatus | None = None,
    status: FOStatus | None = None,
    data: Mapping[str, object] | None = None,
    cancellation_plan_id: int | None = None,
) -> bool:
    """Move a fulfillment order's `request_status` and/or `status` together, compare-and-set on both.

    `cancellation_plan_id`: set with the move (in the same statement, only if the move is made).
    """
    new_request = request_status or fo.request_status
    new_status = status or fo.status
    if new_request != fo.request_status:
        require("fulfillment_order.request_status", fo.request_status, new_request)
    if new_status != fo.status:
        require("fulfillment_order.status", fo.status, new_status)
    stamp = now()
    row = (
        session.connection()
        .execute(
            _MOVE_FULFILLMENT_ORDER if cancellation_plan_id is None else _MOVE_FULFILLMENT_ORDER_TO_PLAN,
            {
                "_plan_id": cancellation_plan_id,
                "_id": fo.id,
                "_from_request": fo.request_status,
                "_from_status": fo.status,
                "_to_request": new_request,
                "_to_status": new_status,
                "_stamp": stamp,
                "_entity": "fulfillment_order",
                "_kind": f"fulfillment_order.{new_request.value}",
                "_from": f"{fo.request_status.value}/{fo.status.value}",
                "_to": f"{new_request.value}/{new_status.value}",
                "_data": dict(data or {}),
            },
        )
        .first()
    )
    if row is None:
        log.info("fulfillment order %s moved by someone else", fo.id)
        return False
    set_committed_value(fo, "request_status", new_request)
    set_committed_value(fo, "status", new_status)
    set_committed_value(fo, "version", fo.version + 1)
    set_committed_value(fo, "modified_date", stamp)
    if cancellation_plan_id is not None:
        set_committed_value(fo, "cancellation_plan_id", cancellation_plan_id)
    return True


_PLANS = table_of(CancellationPlan)


def move_escalation(
    session: Session,
    plan: CancellationPlan,
    to: EscalationState,
    *,
    data: Mapping[str, object] | None = None,
    deadline_at: datetime | None = None,
) -> bool:
    """Escalate a waiting plan to staff, or lift its escalation (with a new `deadline_at`), if nobody moved it
    first; the `plan.escalated` / `plan.escalation_lifted` event is written with it."""
    current = escalation_of(plan.status, plan.escalated_at)
    if current is None:
        raise InvalidTransition(
            f"plan {plan.id} is {plan.status.value}: only a plan in {ESCALATING.value} is escalated or lifted",
            machine="escalation",
            current=plan.status.value,
            target=to.value,
        )
    require("escalation", current, to)
    stamp = now()
    escalated_at = stamp if to == EscalationState.escalated else None
    values: dict[str, object] = {
        "escalated_at": escalated_at,
        "version": _PLANS.c.version + 1,
        "modified_date": stamp,
    }
    if deadline_at is not None:
        values["deadline_at"] = deadline_at
    was = (
        _PLANS.c.escalated_at.is_(None)
        if current == EscalationState.none
        else _PLANS.c.escalated_at.is_not(None)
    )
    moved = session.connection().execute(
        update(_PLANS).where(_PLANS.c.id == plan.id, _PLANS.c.status == ESCALATING, was).values(**values)
    )
    if moved.rowcount == 0:
        log.info("plan %s escalation moved by someone else; leaving %s -> %s", plan.id, current, to)
        return False
    set_committed_value(plan, "escalated_at", escalated_at)
    set_committed_value(plan, "version", plan.version + 1)
    set_committed_value(plan, "modified_date", stamp)
    if deadline_at is not None:
        set_committed_value(plan, "deadline_at", deadline_at)
    kind = "plan.escalated" if to == EscalationState.escalated else "plan.escalation_lifted"
    record_event(session, "plan", plan.id, kind, from_status=current.value, to_status=to.value, data=data)
    return True


__all__ = [
    "EscalationState",
    "InvalidTransition",
    "PlanStatus",
    "RequestStatus",
    "StepStatus",
    "move",
    "move_escalation",
    "move_fulfillment_order",
    "record_event",
]
