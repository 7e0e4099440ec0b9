"""Bodies of the order routes (`api.orders`)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import AliasPath, BaseModel, Field, field_validator

from cancelflow.api.schemas.common import FromRow, mapping
from cancelflow.models.enums import PaymentMethod


class ImportResult(BaseModel):
    imported: dict[str, int] = Field(
        description="Rows written per kind; all zero when the same data was imported before.",
        json_schema_extra={
            "example": {"channels": 0, "orders": 1, "order_items": 2, "fulfillment_orders": 1}
        },
    )


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
