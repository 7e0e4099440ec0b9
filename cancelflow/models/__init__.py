"""Typed SQLAlchemy 2 models. No I/O beyond the ORM lives here."""

from cancelflow.models.audit import Event
from cancelflow.models.auth import ApiToken
from cancelflow.models.base import Base
from cancelflow.models.cancellation import (
    CancellationPlan,
    CancellationRequest,
    LoyaltyLedgerEntry,
    MoneyTransaction,
    WorkflowStep,
)
from cancelflow.models.catalog import (
    CancellationReason,
    Channel,
    Customer,
    FulfillmentService,
    Order,
    OrderItem,
    Payment,
)
from cancelflow.models.fulfillment import FulfillmentOrder, FulfillmentOrderLineItem, MerchantRequest

__all__ = [
    "ApiToken",
    "Base",
    "CancellationPlan",
    "CancellationReason",
    "CancellationRequest",
    "Channel",
    "Customer",
    "Event",
    "FulfillmentOrder",
    "FulfillmentOrderLineItem",
    "FulfillmentService",
    "LoyaltyLedgerEntry",
    "MerchantRequest",
    "MoneyTransaction",
    "Order",
    "OrderItem",
    "Payment",
    "WorkflowStep",
]
