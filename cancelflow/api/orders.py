"""Order import and lookup (`/api/v1/orders/`): how a deployment brings its own orders and services."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from cancelflow.api.auth import AkinonStaff
from cancelflow.api.deps import DbSession
from cancelflow.api.errors import AKINON_RESPONSES
from cancelflow.errors import NotFound
from cancelflow.models.enums import PaymentMethod
from cancelflow.services import importer, request_view
from cancelflow.services.importer import ImportPayload

router = APIRouter(prefix="/api/v1/orders", tags=["orders"], responses=AKINON_RESPONSES)


class ImportResult(BaseModel):
    imported: dict[str, int] = Field(
        description="Rows written per kind; all zero when the same data was imported before.",
        json_schema_extra={
            "example": {"channels": 0, "orders": 1, "order_items": 2, "fulfillment_orders": 1}
        },
    )


@router.post(
    "/",
    response_model=ImportResult,
    status_code=201,
    summary="Import orders and reference data",
    description=(
        "Loads channels, cancellation reasons, fulfillment services, customers, and orders with their "
        "items, payment and fulfillment orders (the same payload as `cancelflow import FILE`). Reference "
        "data is upserted by id; orders and what hangs off them are inserted once and then belong to the "
        "workflow. Answers **201** when anything was written and **200** with all counts zero when the "
        "payload was imported before and nothing changed. A fulfillment service with cancellation requests "
        "in flight keeps its handle, callback URL and secret unless `replace_services=true`. Staff token."
    ),
    responses={200: {"model": ImportResult, "description": "Nothing new: every count is zero."}},
)
def import_orders(
    payload: ImportPayload,
    principal: AkinonStaff,
    response: Response,
    session: DbSession,
    replace_services: Annotated[
        bool,
        Query(
            description="Change the handle, callback URL or secret of a fulfillment service even while it "
            "has cancellation requests in flight (otherwise a 400 naming the field)."
        ),
    ] = False,
) -> ImportResult:
    data = payload.model_dump(mode="json")
    counts = importer.import_payload(session, data, replace_services=replace_services)
    if not any(counts.values()):
        response.status_code = 200
    return ImportResult(imported=counts)


class OrderItemOut(BaseModel):
    id: int
    sku: str
    product_name: str
    quantity: int
    unit_price: Decimal = Field(description="Paid unit price after discounts, in the order's currency.")
    requested_quantity: int = Field(description="Quantity held by active cancellation requests.")
    variant_id: int | None
    inventory_item_id: int | None


class PaymentOut(BaseModel):
    id: int
    method: PaymentMethod
    amount: Decimal
    reference: str | None


class OrderOut(BaseModel):
    id: int
    number: str
    channel: int
    customer: int
    currency: str
    shipping_option_slug: str | None
    tracking_number: str | None
    shipping_address: dict[str, Any]
    items: list[OrderItemOut]
    payment: PaymentOut | None
    fulfillment_orders: list[int] = Field(description="Ids of the order's fulfillment orders, in id order.")
    created_date: datetime
    modified_date: datetime


@router.get(
    "/{order_id}/",
    response_model=OrderOut,
    summary="Retrieve an order",
    description="The order with its items, payment and fulfillment-order ids. Staff token.",
)
def get_order(
    order_id: Annotated[int, Path(gt=0, le=2**63 - 1)], principal: AkinonStaff, session: DbSession
) -> OrderOut:
    detail = request_view.order(session, order_id)
    if detail is None:
        raise NotFound(f"order {order_id} not found")
    order, payment = detail.order, detail.payment
    return OrderOut(
        id=order.id,
        number=order.number,
        channel=order.channel_id,
        customer=order.customer_id,
        currency=order.currency,
        shipping_option_slug=order.shipping_option_slug,
        tracking_number=order.tracking_number,
        shipping_address=dict(order.shipping_address or {}),
        items=[
            OrderItemOut(
                id=item.id,
                sku=item.sku,
                product_name=item.product_name,
                quantity=item.quantity,
                unit_price=item.unit_price,
                requested_quantity=item.requested_quantity,
                variant_id=item.variant_id,
                inventory_item_id=item.inventory_item_id,
            )
            for item in detail.items
        ],
        payment=PaymentOut(
            id=payment.id, method=payment.method, amount=payment.amount, reference=payment.reference
        )
        if payment is not None
        else None,
        fulfillment_orders=detail.fulfillment_order_ids,
        created_date=order.created_date,
        modified_date=order.modified_date,
    )
