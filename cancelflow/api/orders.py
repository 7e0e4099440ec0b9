"""Order import and lookup (`/api/v1/orders/`): how a deployment brings its own orders and services."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import AliasPath, BaseModel, Field, field_validator

from cancelflow.api.auth import AkinonStaff
from cancelflow.api.deps import DbSession
from cancelflow.api.errors import AKINON_RESPONSES
from cancelflow.api.schemas import FromRow, mapping
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


class OrderItemOut(FromRow):
    id: int
    sku: str
    product_name: str
    quantity: int
    unit_price: Decimal = Field(description="Paid unit price after discounts, in the order's currency.")
    requested_quantity: int = Field(description="Quantity held by active cancellation requests.")
    variant_id: int | None
    inventory_item_id: int | None


class PaymentOut(FromRow):
    id: int
    method: PaymentMethod
    amount: Decimal
    reference: str | None


class OrderOut(FromRow):
    # Validated from a `services.request_view.OrderDetail`.

    id: int = Field(validation_alias=AliasPath("order", "id"))
    number: str = Field(validation_alias=AliasPath("order", "number"))
    channel: int = Field(validation_alias=AliasPath("order", "channel_id"))
    customer: int = Field(validation_alias=AliasPath("order", "customer_id"))
    currency: str = Field(validation_alias=AliasPath("order", "currency"))
    shipping_option_slug: str | None = Field(validation_alias=AliasPath("order", "shipping_option_slug"))
    tracking_number: str | None = Field(validation_alias=AliasPath("order", "tracking_number"))
    shipping_address: dict[str, Any] = Field(validation_alias=AliasPath("order", "shipping_address"))
    items: list[OrderItemOut]
    payment: PaymentOut | None
    fulfillment_orders: list[int] = Field(
        validation_alias="fulfillment_order_ids",
        description="Ids of the order's fulfillment orders, in id order.",
    )
    created_date: datetime = Field(validation_alias=AliasPath("order", "created_date"))
    modified_date: datetime = Field(validation_alias=AliasPath("order", "modified_date"))

    shipping_address_as_dict = field_validator("shipping_address", mode="before")(mapping)


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
    return OrderOut.model_validate(detail)
