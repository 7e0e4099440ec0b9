"""Bodies of Shopify's fulfillment-order routes (`api.fulfillment`), the seed's fields in the seed's order."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cancelflow.api.schemas.common import FromRow, mapping
from cancelflow.models.enums import FORequestStatus, FOStatus, MerchantRequestKind

OUTGOING_REQUESTS_NOTE = (
    "Always `[]`, as in every example of the seed (its 2020-era name for the request records); "
    "the requests themselves are listed in `merchant_requests`, the name later versions use."
)


FulfillmentOrderAction = Literal[
    "cancel_fulfillment_order",
    "create_fulfillment",
    "mark_as_open",
    "release_hold",
    "request_cancellation",
    "request_fulfillment",
]


class Destination(BaseModel):
    id: int | None
    address1: str | None
    address2: str | None
    city: str | None
    company: str | None
    country: str | None
    email: str | None
    first_name: str | None
    last_name: str | None
    phone: str | None
    province: str | None
    zip: str | None


class Origin(BaseModel):
    address1: str | None
    address2: str | None
    city: str | None
    country_code: str | None
    location_id: int | None
    name: str | None
    phone: str | None
    province: str | None
    zip: str | None


class LineItem(BaseModel):
    id: int
    shop_id: int
    fulfillment_order_id: int
    quantity: int
    line_item_id: int = Field(description="The order item (line item of the order).")
    inventory_item_id: int | None
    fulfillable_quantity: int
    variant_id: int | None


class MerchantRequestOut(FromRow):
    message: str | None
    request_options: dict[str, Any]
    kind: MerchantRequestKind
    sent_at: datetime

    request_options_as_dict = field_validator("request_options", mode="before")(mapping)


class FulfillmentOrderOut(BaseModel):
    id: int
    shop_id: int
    order_id: int
    assigned_location_id: int | None
    request_status: FORequestStatus
    status: FOStatus
    supported_actions: list[FulfillmentOrderAction] = Field(
        description="Computed from `status` and `request_status`; empty once cancelled or closed."
    )
    destination: Destination
    origin: Origin
    line_items: list[LineItem]
    outgoing_requests: list[MerchantRequestOut] = Field(description=OUTGOING_REQUESTS_NOTE)
    fulfillment_service_handle: str | None
    merchant_requests: list[MerchantRequestOut] = Field(
        description="Requests sent to the fulfillment service about this fulfillment order, oldest first."
    )


class FulfillmentOrderEnvelope(BaseModel):
    fulfillment_order: FulfillmentOrderOut


class FulfillmentOrderList(BaseModel):
    fulfillment_orders: list[FulfillmentOrderOut]


class CancellationRequestIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    message: Annotated[str | None, Field(max_length=5000)] = Field(
        default=None, description="The reason for the request, or for accepting / rejecting it."
    )


class CancellationRequestBody(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "example": {"cancellation_request": {"message": "The customer changed his mind."}}
        },
    )

    cancellation_request: CancellationRequestIn | None = None
