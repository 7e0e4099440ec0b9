"""Loading orders and reference data: `cancelflow import FILE` and `POST /api/v1/orders/` share this.

Reference data (channels, reasons, fulfillment services, customers) is upserted by id. Orders, their
items, payment and fulfillment orders are inserted once and then belong to the workflow: importing the
same file again changes nothing, and never rewinds a fulfillment order the workflow has moved.

A fulfillment service with cancellation requests in flight keeps its handle, callback URL and secret
unless the caller passes `replace_services`: changing them under a waiting request would send its next
notification elsewhere or sign it with a secret the warehouse does not know. A handle another service
already has is refused (not a unique-constraint failure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, EmailStr, Field, ValidationError, model_validator
from sqlalchemy import func, or_, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from cancelflow import textcheck
from cancelflow.errors import Invalid
from cancelflow.integrations.outbound import OutboundPolicy, refusal
from cancelflow.models import (
    CancellationPlan,
    CancellationReason,
    Channel,
    Customer,
    FulfillmentOrder,
    FulfillmentOrderLineItem,
    FulfillmentService,
    Order,
    OrderItem,
    Payment,
)
from cancelflow.models.base import Base
from cancelflow.models.enums import CancellationType, FORequestStatus, FOStatus, PaymentMethod, PlanStatus
from cancelflow.models.fulfillment import GENERATED_ID_FLOOR

Id = Annotated[int, Field(gt=0, lt=2**63)]
# Ids from GENERATED_ID_FLOOR up are the ones cancelflow gives the fulfillment orders it splits off.
FulfillmentId = Annotated[int, Field(gt=0, lt=GENERATED_ID_FLOOR)]
Money = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=2)]
Text = Annotated[str, Field(max_length=300)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChannelIn(_In):
    id: Id
    name: Text
    channel_type: Text = "sales_channel"


class ReasonIn(_In):
    id: Id
    subject: Annotated[str, Field(min_length=1, max_length=100)]
    cancellation_type: CancellationType
    is_active: bool = True
    extra_information_needed: bool = False
    order: int = 100


class ReplyPolicyIn(_In):
    deadline_seconds: Annotated[int, Field(gt=0)] = 2 * 24 * 3600
    reminder_interval_seconds: Annotated[int, Field(gt=0)] = 6 * 3600
    reminder_count: Annotated[int, Field(ge=0, le=100)] = 3
    deadline_action: Literal["escalate", "cancel_locally", "reject"] = "escalate"


class ServiceIn(_In):
    id: Id
    handle: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    name: Text
    callback_url: AnyHttpUrl
    secret: Annotated[str, Field(min_length=8, max_length=200)]
    location_id: Id
    location_name: Text = ""
    country_code: Annotated[str, Field(min_length=2, max_length=2)] | None = None
    reply_policy: ReplyPolicyIn = ReplyPolicyIn()


class CustomerIn(_In):
    id: Id
    first_name: Text = ""
    last_name: Text = ""
    email: EmailStr
    channel: Id | None = None


class PaymentIn(_In):
    method: PaymentMethod
    amount: Money
    reference: Annotated[str, Field(max_length=200)] | None = None


class ItemIn(_In):
    id: Id
    sku: Annotated[str, Field(min_length=1, max_length=100)]
    product_name: Text = ""
    quantity: Annotated[int, Field(gt=0, le=1_000_000)]
    unit_price: Money
    variant_id: Id | None = None
    inventory_item_id: Id | None = None


class FOLineIn(_In):
    id: FulfillmentId
    order_item: Id
    quantity: Annotated[int, Field(gt=0)]
    fulfillable_quantity: Annotated[int, Field(ge=0)] | None = None


class FulfillmentOrderIn(_In):
    id: FulfillmentId
    fulfillment_service: str | None = None  # handle; None = merchant-managed
    assigned_location_id: Id | None = None
    request_status: FORequestStatus = FORequestStatus.unsubmitted
    status: FOStatus = FOStatus.open
    destination: dict[str, Any] = Field(default_factory=dict)
    origin: dict[str, Any] | None = None
    line_items: list[FOLineIn] = Field(min_length=1)


class OrderIn(_In):
    id: Id
    number: Annotated[str, Field(min_length=1, max_length=100)]
    channel: Id
    customer: Id | CustomerIn
    currency: Annotated[str, Field(min_length=3, max_length=3)]
    shipping_option_slug: Annotated[str, Field(max_length=100)] | None = None
    tracking_number: Annotated[str, Field(max_length=100)] | None = None
    shipping_address: dict[str, Any] = Field(default_factory=dict)
    payment: PaymentIn | None = None
    items: list[ItemIn] = Field(min_length=1)
    fulfillment_orders: list[FulfillmentOrderIn] = Field(default_factory=list)

    @model_validator(mode="after")
    def _fulfillment_within_items(self) -> OrderIn:
        ordered = {item.id: item.quantity for item in self.items}
        assigned: dict[int, int] = {}
        for fo in self.fulfillment_orders:
            for line in fo.line_items:
                if line.order_item not in ordered:
                    raise ValueError(
                        f"fulfillment order {fo.id} names order item {line.order_item} not in order"
                    )
                assigned[line.order_item] = assigned.get(line.order_item, 0) + line.quantity
        for item_id, quantity in assigned.items():
            if quantity > ordered[item_id]:
                raise ValueError(f"order item {item_id}: fulfillment orders hold more than was ordered")
        return self


class ImportPayload(_In):
    channels: list[ChannelIn] = Field(default_factory=list)
    cancellation_reasons: list[ReasonIn] = Field(default_factory=list)
    fulfillment_services: list[ServiceIn] = Field(default_factory=list)
    customers: list[CustomerIn] = Field(default_factory=list)
    orders: list[OrderIn] = Field(default_factory=list)


def parse(payload: Mapping[str, Any]) -> ImportPayload:
    textcheck.refuse(payload, message="invalid import payload", code="invalid_import")
    try:
        return ImportPayload.model_validate(payload)
    except ValidationError as exc:
        errors: dict[str, list[str]] = {}
        for err in exc.errors():
            errors.setdefault(".".join(str(p) for p in err["loc"]) or "non_field_errors", []).append(
                err["msg"]
            )
        raise Invalid("invalid import payload", field_errors=errors, code="invalid_import") from exc


def _upsert(session: Session, model: type[Base], rows: Sequence[dict[str, Any]], *, update: bool) -> int:
    if not rows:
        return 0
    stmt = insert(model).values(list(rows))
    if update:
        columns = [c for c in rows[0] if c != "id"]
        changed = [getattr(model, c).is_distinct_from(stmt.excluded[c]) for c in columns]
        stmt = stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={c: stmt.excluded[c] for c in columns},
            where=or_(*changed),
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=["id"])
    result = session.execute(stmt.returning(model.__table__.c.id))
    return len(result.all())


def import_payload(
    session: Session,
    payload: Mapping[str, Any],
    *,
    outbound_policy: OutboundPolicy | None = None,
    replace_services: bool = False,
) -> dict[str, int]:
    """Load the payload; returns how many rows of each kind were written (0 for an unchanged re-import).

    `outbound_policy`: where callback URLs may point (default: the configured one).
    `replace_services`: allow changing the handle, callback URL or secret of a fulfillment service that has
    cancellation requests in flight (refused otherwise).
    """
    data = parse(payload)
    # Before anything is written: a bad payload writes nothing.
    _check_callbacks(data, outbound_policy or OutboundPolicy.from_settings())
    _check_references(session, data, replace_services=replace_services)
    counts: dict[str, int] = {}
    counts["channels"] = _upsert(session, Channel, [c.model_dump() for c in data.channels], update=True)
    counts["cancellation_reasons"] = _upsert(
        session, CancellationReason, [r.model_dump() for r in data.cancellation_reasons], update=True
    )
    counts["fulfillment_services"] = _upsert(
        session,
        FulfillmentService,
        [
            {
                "id": s.id,
                "handle": s.handle,
                "name": s.name,
                "callback_url": str(s.callback_url).rstrip("/"),
                "secret": s.secret,
                "location_id": s.location_id,
                "location_name": s.location_name,
                "country_code": s.country_code,
                "reply_deadline_seconds": s.reply_policy.deadline_seconds,
                "reminder_interval_seconds": s.reply_policy.reminder_interval_seconds,
                "reminder_count": s.reply_policy.reminder_count,
                "deadline_action": s.reply_policy.deadline_action,
            }
            for s in data.fulfillment_services
        ],
        update=True,
    )
    customers = {c.id: c for c in data.customers}
    for order in data.orders:
        if isinstance(order.customer, CustomerIn):
            customers[order.customer.id] = order.customer
    counts["customers"] = _upsert(
        session,
        Customer,
        [
            {
                "id": c.id,
                "first_name": c.first_name,
                "last_name": c.last_name,
                "email": str(c.email),
                "channel_id": c.channel,
            }
            for c in customers.values()
        ],
        update=True,
    )
    services = {s.handle: s for s in session.scalars(select(FulfillmentService))}
    orders, items, payments, fo_rows, fo_lines = [], [], [], [], []
    for order in data.orders:
        customer_id = order.customer.id if isinstance(order.customer, CustomerIn) else order.customer
        orders.append(
            {
                "id": order.id,
                "number": order.number,
                "channel_id": order.channel,
                "customer_id": customer_id,
                "currency": order.currency.lower(),
                "shipping_option_slug": order.shipping_option_slug,
                "tracking_number": order.tracking_number,
                "shipping_address": order.shipping_address,
            }
        )
        for item in order.items:
            items.append({**item.model_dump(), "order_id": order.id, "requested_quantity": 0})
        if order.payment is not None:
            payments.append({**order.payment.model_dump(), "order_id": order.id})
        for fo in order.fulfillment_orders:
            service = services[fo.fulfillment_service] if fo.fulfillment_service else None
            fo_rows.append(
                {
                    "id": fo.id,
                    "order_id": order.id,
                    "fulfillment_service_id": service.id if service else None,
                    "assigned_location_id": fo.assigned_location_id
                    or (service.location_id if service else None),
                    "request_status": fo.request_status,
                    "status": fo.status,
                    "destination": fo.destination or {"id": order.id, **order.shipping_address},
                    "origin": fo.origin if fo.origin is not None else _origin(service),
                    "version": 1,
                }
            )
            for line in fo.line_items:
                fo_lines.append(
                    {
                        "id": line.id,
                        "fulfillment_order_id": fo.id,
                        "order_item_id": line.order_item,
                        "quantity": line.quantity,
                        "fulfillable_quantity": line.quantity
                        if line.fulfillable_quantity is None
                        else line.fulfillable_quantity,
                    }
                )
    counts["orders"] = _upsert(session, Order, orders, update=False)
    counts["order_items"] = _upsert(session, OrderItem, items, update=False)
    if payments:
        result = session.execute(
            insert(Payment)
            .values(payments)
            .on_conflict_do_nothing(index_elements=["order_id"])
            .returning(Payment.id)
        )
        counts["payments"] = len(result.all())
    else:
        counts["payments"] = 0
    counts["fulfillment_orders"] = _upsert(session, FulfillmentOrder, fo_rows, update=False)
    counts["fulfillment_order_line_items"] = _upsert(
        session, FulfillmentOrderLineItem, fo_lines, update=False
    )
    _advance_sequences(session)
    session.flush()
    return counts


def _origin(service: FulfillmentService | None) -> dict[str, Any]:
    return {
        "address1": None,
        "address2": None,
        "city": None,
        "country_code": service.country_code if service else None,
        "location_id": service.location_id if service else None,
        "name": service.location_name if service else None,
        "phone": None,
        "province": None,
        "zip": None,
    }


def _check_callbacks(data: ImportPayload, policy: OutboundPolicy) -> None:
    """Callback URLs that notifications may reach: no credentials, no private or loopback destination."""
    errors: dict[str, list[str]] = {}
    for k, service in enumerate(data.fulfillment_services):
        problem = refusal(str(service.callback_url), policy=policy)
        if problem is not None:
            errors.setdefault(f"fulfillment_services.{k}.callback_url", []).append(problem)
    if errors:
        raise Invalid("invalid import payload", field_errors=errors, code="invalid_import")


def _check_references(session: Session, data: ImportPayload, *, replace_services: bool) -> None:
    errors: dict[str, list[str]] = {}
    _check_services(session, data, errors, replace_services=replace_services)
    handles = {s.handle for s in data.fulfillment_services} | set(
        session.scalars(select(FulfillmentService.handle)).all()
    )
    channels = {c.id for c in data.channels} | set(session.scalars(select(Channel.id)).all())
    customer_ids = {c.id for c in data.customers} | {
        o.customer.id for o in data.orders if isinstance(o.customer, CustomerIn)
    }
    wanted = {o.customer for o in data.orders if isinstance(o.customer, int)} - customer_ids
    if wanted:
        customer_ids |= set(session.scalars(select(Customer.id).where(Customer.id.in_(wanted))).all())
    numbers = {o.number for o in data.orders}
    taken = dict(session.execute(select(Order.number, Order.id).where(Order.number.in_(numbers))).all())
    seen: dict[str, int] = {}
    for k, customer in enumerate(data.customers):
        if customer.channel is not None and customer.channel not in channels:
            errors.setdefault(f"customers.{k}.channel", []).append("non-existent object")
    for i, order in enumerate(data.orders):
        if (
            isinstance(order.customer, CustomerIn)
            and order.customer.channel is not None
            and (order.customer.channel not in channels)
        ):
            errors.setdefault(f"orders.{i}.customer.channel", []).append("non-existent object")
        if order.channel not in channels:
            errors.setdefault(f"orders.{i}.channel", []).append("non-existent object")
        if isinstance(order.customer, int) and order.customer not in customer_ids:
            errors.setdefault(f"orders.{i}.customer", []).append("non-existent object")
        owner = taken.get(order.number, seen.get(order.number, order.id))
        if owner != order.id:
            errors.setdefault(f"orders.{i}.number", []).append("order number already used by another order")
        seen.setdefault(order.number, order.id)
        for j, fo in enumerate(order.fulfillment_orders):
            if fo.fulfillment_service is not None and fo.fulfillment_service not in handles:
                errors.setdefault(f"orders.{i}.fulfillment_orders.{j}.fulfillment_service", []).append(
                    "non-existent object"
                )
    _check_ownership(session, data, errors)
    if errors:
        raise Invalid("invalid import payload", field_errors=errors, code="invalid_import")


# Fields whose change repoints or re-keys a service: where its notifications go and how they are signed.
_SERVICE_IDENTITY: Final = ("handle", "callback_url", "secret")
_PLAN_DONE: Final = (PlanStatus.completed, PlanStatus.rejected)


def _check_services(
    session: Session, data: ImportPayload, errors: dict[str, list[str]], *, replace_services: bool
) -> None:
    """A handle belongs to one service; a service with requests in flight keeps its identity unless asked."""
    if not data.fulfillment_services:
        return
    ids = [s.id for s in data.fulfillment_services]
    handles = [s.handle for s in data.fulfillment_services]
    stored = {
        row.id: row
        for row in session.scalars(
            select(FulfillmentService).where(
                or_(FulfillmentService.id.in_(ids), FulfillmentService.handle.in_(handles))
            )
        )
    }
    owner_of = {row.handle: row.id for row in stored.values()}
    in_flight = dict(
        session.execute(
            select(FulfillmentOrder.fulfillment_service_id, func.count(FulfillmentOrder.id))
            .join(CancellationPlan, CancellationPlan.id == FulfillmentOrder.cancellation_plan_id)
            .where(
                FulfillmentOrder.fulfillment_service_id.in_(ids), CancellationPlan.status.not_in(_PLAN_DONE)
            )
            .group_by(FulfillmentOrder.fulfillment_service_id)
        ).all()
    )
    for k, service in enumerate(data.fulfillment_services):
        owner = owner_of.get(service.handle, service.id)
        if owner != service.id:
            errors.setdefault(f"fulfillment_services.{k}.handle", []).append(
                f"handle already used by fulfillment service {owner}"
            )
        row = stored.get(service.id)
        if row is None or replace_services or not in_flight.get(service.id):
            continue
        wanted = {
            "handle": service.handle,
            "callback_url": str(service.callback_url).rstrip("/"),
            "secret": service.secret,
        }
        for name in _SERVICE_IDENTITY:
            if getattr(row, name) != wanted[name]:
                errors.setdefault(f"fulfillment_services.{k}.{name}", []).append(
                    f"fulfillment service {row.id} ({row.handle}) has {in_flight[service.id]} fulfillment "
                    f"orders in cancellation requests still running; changing its {name} would break them "
                    "(import with replace_services to change it anyway)"
                )


def _check_ownership(session: Session, data: ImportPayload, errors: dict[str, list[str]]) -> None:
    """An item, fulfillment order or line id already stored must belong to the same parent: importing
    it under another one would be skipped as "already there" and the new order would silently lack it."""
    items: dict[int, int] = {}
    fos: dict[int, int] = {}
    lines: dict[int, int] = {}
    for order in data.orders:
        items.update({item.id: order.id for item in order.items})
        for fo in order.fulfillment_orders:
            fos[fo.id] = order.id
            lines.update({line.id: fo.id for line in fo.line_items})
    # Who owns each id: the stored parent, else the first parent in this payload to name it.
    item_owner = dict(
        session.execute(select(OrderItem.id, OrderItem.order_id).where(OrderItem.id.in_(items))).all()
    )
    fo_owner = dict(
        session.execute(
            select(FulfillmentOrder.id, FulfillmentOrder.order_id).where(FulfillmentOrder.id.in_(fos))
        ).all()
    )
    line_owner = dict(
        session.execute(
            select(FulfillmentOrderLineItem.id, FulfillmentOrderLineItem.fulfillment_order_id).where(
                FulfillmentOrderLineItem.id.in_(lines)
            )
        ).all()
    )

    def claim(owners: dict[int, int], child: int, parent: int, field: str, message: str) -> None:
        if owners.setdefault(child, parent) != parent:
            errors.setdefault(field, []).append(message)

    for i, order in enumerate(data.orders):
        for k, item in enumerate(order.items):
            used = "order item id already used by another order"
            claim(item_owner, item.id, order.id, f"orders.{i}.items.{k}.id", used)
        for j, fo in enumerate(order.fulfillment_orders):
            where = f"orders.{i}.fulfillment_orders.{j}"
            used = "fulfillment order id already used by another order"
            claim(fo_owner, fo.id, order.id, f"{where}.id", used)
            for n, line in enumerate(fo.line_items):
                used = "line item id already used by another fulfillment order"
                claim(line_owner, line.id, fo.id, f"{where}.line_items.{n}.id", used)


def _advance_sequences(session: Session) -> None:
    """Imported rows carry their own ids; keep generated ids (splits, new rows) clear of them."""
    for table in (  # not the fulfillment orders: theirs start at GENERATED_ID_FLOOR (migration 0010)
        "orders",
        "order_items",
        "customers",
        "channels",
        "cancellation_reasons",
        "fulfillment_services",
    ):
        session.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608 - fixed table names
                f"GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table}), "
                f"(SELECT last_value FROM {table}_id_seq)), true)"
            )
        )
