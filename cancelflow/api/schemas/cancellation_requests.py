"""Bodies of the cancellation-request routes (`api.cancellation_requests`).

Responses are validated from the rows' attributes (`model_validate(row)`): a field named as its column
reads it, a field named otherwise says where it comes from (`validation_alias`), and the fields the seed
has but cancelflow does not keep are constants. What a reader may not see (IBANs, internal error texts)
is masked by the router after validation, since it depends on who asks.
"""

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Final
from uuid import UUID

from pydantic import AliasPath, BaseModel, ConfigDict, Field, field_validator, model_validator

from cancelflow.api.schemas.common import MAX_ID, FromRow, constant, mapping
from cancelflow.errors import Invalid
from cancelflow.models.enums import (
    CancellationType,
    PlanStatus,
    RefundTarget,
    RequestStatus,
    StepKind,
    StepStatus,
)
from cancelflow.services import queries

Description = Annotated[str | None, Field(max_length=2000)]
IbanIn = Annotated[str | None, Field(max_length=64)]
HolderIn = Annotated[str | None, Field(max_length=200)]
IdIn = Annotated[int, Field(gt=0, le=MAX_ID)]
QuantityIn = Annotated[int, Field(gt=0, le=1_000_000)]


# --- responses ----------------------------------------------------------------------------------------


def _request(name: str) -> AliasPath:
    return AliasPath("request", name)


def _plan(name: str) -> AliasPath:
    return AliasPath("plan", name)


class CancellationRequestOut(FromRow):
    """Akinon `CancellationRequest` (UUIDStarterModel + Entity), plus `order`, `channel` and the
    machine-readable `rejection_code` / `rejection_message` of a rejected request."""

    id: int = Field(description="Cancellation Request ID")
    uuid: UUID
    order_item: int = Field(validation_alias="order_item_id")
    reason: int = Field(validation_alias="reason_id")
    description: str | None
    cancellation_type: CancellationType
    status: RequestStatus
    iban: str | None = Field(description="Masked unless the token is staff with the `view_iban` permission.")
    holder_name: str | None
    easy_return: dict[str, Any] | None = constant(
        None, description="Always null: cancelflow keeps no easy-return records."
    )
    quantity: int | None
    fully_refund_as_loyalty_money: bool
    created_date: datetime
    modified_date: datetime
    attributes: dict[str, Any]
    attributes_kwargs: dict[str, Any] = constant({})
    localized_attributes: dict[str, Any] = constant({})
    localized_attributes_kwargs: dict[str, Any] = constant({})
    order: int = Field(validation_alias="order_id")
    channel: int = Field(validation_alias="channel_id")
    rejection_code: str | None
    rejection_message: str | None

    attributes_as_dict = field_validator("attributes", mode="before")(mapping)


class CancellationRequestPage(BaseModel):
    count: int = Field(
        description=(
            f"Exact up to {queries.EXACT_COUNT_LIMIT} matching requests; above that PostgreSQL's estimate."
        )
    )
    next: str | None = Field(
        description="The next page, or null: absolute under the configured public base URL, else a path."
    )
    previous: str | None = Field(
        description="The previous page, or null: absolute under the configured public base URL, else a path."
    )
    results: list[CancellationRequestOut]


class CustomerOut(FromRow):
    id: int
    first_name: str
    last_name: str
    email: str
    channel: int | None = Field(validation_alias="channel_id")


class OrderOut(FromRow):
    id: int
    number: str
    channel: int = Field(validation_alias="channel_id")
    currency: str
    shipping_option_slug: str | None
    tracking_number: str | None
    created_date: datetime


class OrderItemOut(FromRow):
    id: int
    sku: str
    product_name: str
    quantity: int
    unit_price: Decimal
    requested_quantity: int


class ReasonOut(FromRow):
    id: int
    subject: str
    cancellation_type: CancellationType


class StepOut(FromRow):
    """A workflow step as `cancelflow show` prints it (`services.step_view`)."""

    id: int
    kind: StepKind
    status: StepStatus
    attempt: int
    max_attempts: int
    next_attempt_at: datetime | None = Field(description="When a pending step runs next; null once finished.")
    deadline_at: datetime | None
    fulfillment_order_id: int | None
    last_error: str | None = Field(
        description="Why the last failed attempt failed, null once the step is done (staff only; null for other "
        "tokens, which see `status`)."
    )
    finished_at: datetime | None
    created_date: datetime


class MoneyTransactionOut(FromRow):
    id: int
    target: RefundTarget
    amount: Decimal
    currency: str
    external_id: str | None
    created_date: datetime


class PlanOut(FromRow):
    # Validated from a `services.request_view.RequestDetail`: the plan's row, the request's steps, the
    # plan's money transactions.

    id: int = Field(validation_alias=_plan("id"))
    status: PlanStatus = Field(validation_alias=_plan("status"))
    plan_type: CancellationType = Field(validation_alias=_plan("plan_type"))
    amount: Decimal = Field(validation_alias=_plan("amount"))
    currency: str = Field(validation_alias=_plan("currency"))
    refund_target: RefundTarget = Field(validation_alias=_plan("refund_target"))
    deadline_at: datetime | None = Field(validation_alias=_plan("deadline_at"))
    escalated_at: datetime | None = Field(validation_alias=_plan("escalated_at"))
    failure_reason: str | None = Field(
        validation_alias=_plan("failure_reason"),
        description="Why the plan failed (staff only; null for other tokens, which see `status`).",
    )
    created_date: datetime = Field(validation_alias=_plan("created_date"))
    modified_date: datetime = Field(validation_alias=_plan("modified_date"))
    steps: list[StepOut] = Field(description="Every step of the request, validation included, oldest first.")
    money_transactions: list[MoneyTransactionOut] = Field(validation_alias="money")


class DetailedCancellationRequestOut(FromRow):
    """The request with its order, item, customer, reason and plan (steps and money transactions)."""

    # Validated from the parts of a `services.request_view.RequestDetail`, its plan already a `PlanOut`.

    id: int = Field(validation_alias=_request("id"), description="Cancellation Request ID")
    uuid: UUID = Field(validation_alias=_request("uuid"))
    description: str | None = Field(validation_alias=_request("description"))
    cancellation_type: CancellationType = Field(validation_alias=_request("cancellation_type"))
    status: RequestStatus = Field(validation_alias=_request("status"))
    iban: str | None = Field(
        validation_alias=_request("iban"),
        description="Masked unless the token is staff with the `view_iban` permission.",
    )
    holder_name: str | None = Field(validation_alias=_request("holder_name"))
    quantity: int | None = Field(validation_alias=_request("quantity"))
    fully_refund_as_loyalty_money: bool = Field(validation_alias=_request("fully_refund_as_loyalty_money"))
    easy_return: dict[str, Any] | None = constant(None)
    created_date: datetime = Field(validation_alias=_request("created_date"))
    modified_date: datetime = Field(validation_alias=_request("modified_date"))
    attributes: dict[str, Any] = Field(validation_alias=_request("attributes"))
    rejection_code: str | None = Field(validation_alias=_request("rejection_code"))
    rejection_message: str | None = Field(validation_alias=_request("rejection_message"))
    channel: int = Field(validation_alias=_request("channel_id"))
    order: OrderOut
    order_item: OrderItemOut = Field(validation_alias="item")
    customer: CustomerOut
    reason: ReasonOut
    plan: PlanOut | None

    attributes_as_dict = field_validator("attributes", mode="before")(mapping)


class DetailedCancellationRequestPage(BaseModel):
    count: int
    next: str | None
    previous: str | None
    results: list[DetailedCancellationRequestOut]


class CancellationRequestCreate(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "example": {"order_item": 1, "reason": 1, "description": "Changed my mind", "quantity": 1}
        },
    )

    order_item: IdIn = Field(description="Related order item ID")
    reason: IdIn = Field(description="Related cancellation reason ID")
    description: Description = Field(default=None, description="Description of the cancellation request")
    cancellation_type: CancellationType = Field(
        default=CancellationType.cancel, description="Type of cancellation"
    )
    iban: IbanIn = Field(default=None, description="IBAN for refund")
    holder_name: HolderIn = Field(default=None, description="Name of the account holder")
    quantity: QuantityIn | None = Field(
        default=None, description="Quantity of items to be cancelled (default: all that is left)."
    )
    fully_refund_as_loyalty_money: bool = Field(default=False)


_NOT_NULL: Final = (
    "status",
    "cancellation_type",
    "quantity",
    "fully_refund_as_loyalty_money",
    "reason",
    "order_item",
)


class CancellationRequestUpdate(BaseModel):
    """PUT and PATCH bodies: every field optional (as the seed documents both); only the fields sent
    change. `status`: `approved` approves a waiting request, `rejected` rejects it."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"example": {"status": "approved"}})

    status: RequestStatus | None = Field(default=None, description="Status of the cancellation request.")
    description: Description = None
    iban: IbanIn = None
    holder_name: HolderIn = None
    cancellation_type: CancellationType | None = None
    quantity: QuantityIn | None = None
    fully_refund_as_loyalty_money: bool | None = Field(
        default=None, description="Flag to indicate if the refund should be processed as loyalty money"
    )
    reason: IdIn | None = Field(default=None, description="Related cancellation reason ID")
    order_item: IdIn | None = Field(default=None, description="Related order item ID")

    @model_validator(mode="after")
    def _not_null(self) -> "CancellationRequestUpdate":
        nulls = [name for name in _NOT_NULL if name in self.model_fields_set and getattr(self, name) is None]
        if nulls:
            raise Invalid(
                "null not allowed", field_errors={name: ["This field may not be null."] for name in nulls}
            )
        return self

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}
