"""What the order-management system owns and imports: channels, customers, orders, payments, services."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Enum, ForeignKey, Integer, Numeric, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from cancelflow.models.base import Base, TimestampMixin
from cancelflow.models.enums import CancellationType, PaymentMethod


def enum_column(enum: type, name: str) -> Enum:
    """A VARCHAR-backed enum stored by value, so adding a member needs no type migration."""
    return Enum(
        enum,
        name=name,
        native_enum=False,
        length=40,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
        create_constraint=False,
    )


class Channel(TimestampMixin, Base):
    __tablename__ = "channels"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    channel_type: Mapped[str] = mapped_column(String(40), default="sales_channel")


class Customer(TimestampMixin, Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    first_name: Mapped[str] = mapped_column(String(200), default="")
    last_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(320), index=True)
    channel_id: Mapped[int | None] = mapped_column(ForeignKey("channels.id"), nullable=True)


class CancellationReason(TimestampMixin, Base):
    __tablename__ = "cancellation_reasons"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    subject: Mapped[str] = mapped_column(String(100))
    cancellation_type: Mapped[CancellationType] = mapped_column(
        enum_column(CancellationType, "cancellation_type")
    )
    extra_information_needed: Mapped[bool] = mapped_column(Boolean, default=False)
    order: Mapped[int] = mapped_column(Integer, default=100)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)


class FulfillmentService(TimestampMixin, Base):
    """A warehouse or 3PL that holds fulfillment orders and answers cancellation requests."""

    __tablename__ = "fulfillment_services"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    handle: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    callback_url: Mapped[str] = mapped_column(String(2000))
    # Needed in clear to sign notifications (HMAC); never returned by the API.
    secret: Mapped[str] = mapped_column(String(200))
    location_id: Mapped[int] = mapped_column(BigInteger)
    location_name: Mapped[str] = mapped_column(String(200), default="")
    country_code: Mapped[str | None] = mapped_column(String(2), nullable=True)
    # Reply policy: how long the service has to answer a cancellation request, and how it is chased.
    reply_deadline_seconds: Mapped[int] = mapped_column(Integer, default=2 * 24 * 3600)
    reminder_interval_seconds: Mapped[int] = mapped_column(Integer, default=6 * 3600)
    reminder_count: Mapped[int] = mapped_column(Integer, default=3)
    deadline_action: Mapped[str] = mapped_column(String(20), default="escalate")


class Order(TimestampMixin, Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    number: Mapped[str] = mapped_column(String(100), unique=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id"), index=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    shipping_option_slug: Mapped[str | None] = mapped_column(String(100), nullable=True)
    tracking_number: Mapped[str | None] = mapped_column(String(100), nullable=True)
    shipping_address: Mapped[dict[str, object]] = mapped_column(JSONB, default=dict)


class OrderItem(TimestampMixin, Base):
    __tablename__ = "order_items"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        # The sum of active cancellation requests never exceeds what was ordered.
        CheckConstraint(
            "requested_quantity >= 0 AND requested_quantity <= quantity", name="requested_le_ordered"
        ),
        CheckConstraint("unit_price >= 0", name="unit_price_non_negative"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    sku: Mapped[str] = mapped_column(String(100))
    product_name: Mapped[str] = mapped_column(String(300), default="")
    quantity: Mapped[int] = mapped_column(Integer)
    # Paid unit price after discounts, in the order's currency.
    unit_price: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    requested_quantity: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    variant_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    inventory_item_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Payment(TimestampMixin, Base):
    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), unique=True)
    method: Mapped[PaymentMethod] = mapped_column(enum_column(PaymentMethod, "payment_method"))
    amount: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    reference: Mapped[str | None] = mapped_column(String(200), nullable=True)


__all__ = [
    "CancellationReason",
    "Channel",
    "Customer",
    "FulfillmentService",
    "Order",
    "OrderItem",
    "Payment",
    "enum_column",
]
