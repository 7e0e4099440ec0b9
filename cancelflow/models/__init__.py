"""Typed SQLAlchemy 2 models. No I/O beyond the ORM lives here."""

from cancelflow.models.audit import Event
from cancelflow.models.auth import ApiToken
from cancelflow.models.base import Base
from cancelflow.models.batch_jobs import BulkJob, ExportFormat, ExportJob, JobStatus
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
from cancelflow.models.rejections import RejectedMessage
from cancelflow.models.tags import CancellationRequestTag, Tag
from cancelflow.models.tallies import Tally
from cancelflow.models.users import ConsoleSession, IdempotencyKey, SavedView, User
from cancelflow.models.webhooks import (
    AttemptOutcome,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSubscription,
)

__all__ = [
    "ApiToken",
    "AttemptOutcome",
    "Base",
    "BulkJob",
    "CancellationPlan",
    "CancellationReason",
    "CancellationRequest",
    "CancellationRequestTag",
    "Channel",
    "ConsoleSession",
    "Customer",
    "DeliveryStatus",
    "Event",
    "ExportFormat",
    "ExportJob",
    "FulfillmentOrder",
    "FulfillmentOrderLineItem",
    "FulfillmentService",
    "IdempotencyKey",
    "JobStatus",
    "LoyaltyLedgerEntry",
    "MerchantRequest",
    "MoneyTransaction",
    "Order",
    "OrderItem",
    "Payment",
    "RejectedMessage",
    "SavedView",
    "Tag",
    "Tally",
    "User",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookSubscription",
    "WorkflowStep",
]
