"""Fulfillment orders as Shopify models them: the unit a fulfillment service accepts, fulfils or cancels."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from cancelflow.models.base import Base, TimestampMixin
from cancelflow.models.catalog import enum_column
from cancelflow.models.enums import FORequestStatus, FOStatus, MerchantRequestKind

# Fulfillment orders and their lines arrive with the ids the order system gave them (import, POST /orders/);
# the ones cancelflow creates itself (a split) are numbered from here up, so the two never meet.
GENERATED_ID_FLOOR = 10**15


class FulfillmentOrder(TimestampMixin, Base):
    __tablename__ = "fulfillment_orders"
    __table_args__ = (
        Index("ix_fulfillment_orders_service_request_status", "fulfillment_service_id", "request_status"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    # None: merchant-managed, never sent to a service.
    fulfillment_service_id: Mapped[int | None] = mapped_column(
        ForeignKey("fulfillment_services.id"), nullable=True
    )
    assigned_location_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    request_status: Mapped[FORequestStatus] = mapped_column(
        enum_column(FORequestStatus, "fo_request_status"), default=FORequestStatus.unsubmitted
    )
    status: Mapped[FOStatus] = mapped_column(enum_column(FOStatus, "fo_status"), default=FOStatus.open)
    destination: Mapped[dict[str, object]] = mapped_column(JSONB, default=dict)
    origin: Mapped[dict[str, object]] = mapped_column(JSONB, default=dict)
    # Set on the fulfillment order a cancellation plan split off and targets.
    cancellation_plan_id: Mapped[int | None] = mapped_column(
        ForeignKey("cancellation_plans.id"), nullable=True, index=True
    )
    split_from_id: Mapped[int | None] = mapped_column(ForeignKey("fulfillment_orders.id"), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)


class FulfillmentOrderLineItem(Base):
    __tablename__ = "fulfillment_order_line_items"
    __table_args__ = (
        CheckConstraint("quantity >= 0", name="quantity_non_negative"),
        CheckConstraint(
            "fulfillable_quantity >= 0 AND fulfillable_quantity <= quantity", name="fulfillable_le"
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    fulfillment_order_id: Mapped[int] = mapped_column(ForeignKey("fulfillment_orders.id"), index=True)
    order_item_id: Mapped[int] = mapped_column(ForeignKey("order_items.id"), index=True)
    quantity: Mapped[int] = mapped_column(Integer)
    fulfillable_quantity: Mapped[int] = mapped_column(Integer)


class MerchantRequest(Base):
    """A request sent to the service about a fulfillment order (Shopify `outgoing_requests`), and its answer."""

    __tablename__ = "fulfillment_order_requests"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    fulfillment_order_id: Mapped[int] = mapped_column(ForeignKey("fulfillment_orders.id"), index=True)
    kind: Mapped[MerchantRequestKind] = mapped_column(
        enum_column(MerchantRequestKind, "merchant_request_kind")
    )
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    request_options: Mapped[dict[str, object]] = mapped_column(JSONB, default=dict)
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    response: Mapped[str | None] = mapped_column(String(20), nullable=True)
    response_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    responded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reminders_sent: Mapped[int] = mapped_column(Integer, default=0)
    escalated: Mapped[bool] = mapped_column(Boolean, default=False)
