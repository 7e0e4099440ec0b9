"""Tags on cancellation requests: free string keys, shared by every request that carries them."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, String, func
from sqlalchemy.orm import Mapped, mapped_column

from cancelflow.models.base import Base
from cancelflow.models.cancellation import CancellationPlan
from cancelflow.models.catalog import Customer, Order, OrderItem

TAG_KEY_MAX_LENGTH = 100


class Tag(Base):
    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # Stored as given: keys are case-sensitive and never normalised.
    key: Mapped[str] = mapped_column(String(TAG_KEY_MAX_LENGTH), unique=True)


class CancellationRequestTag(Base):
    __tablename__ = "cancellation_request_tags"
    __table_args__ = (
        # "Requests with tag X" is a range scan of this index; the primary key serves "tags of request R".
        Index("ix_cancellation_request_tags_tag_id_request_id", "tag_id", "request_id"),
    )

    request_id: Mapped[int] = mapped_column(
        ForeignKey("cancellation_requests.id", ondelete="CASCADE"), primary_key=True
    )
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)


# --- indexes the request list filters need, on tables other modules own ------------------------------
# Declared here, beside the migration that creates them (0004), so autogenerate sees no drift. The
# case-insensitive filters compare lower(column) = lower(:value), which only an expression index serves.
Index("ix_orders_number_lower", func.lower(Order.number))
Index("ix_customers_email_lower", func.lower(Customer.email))
Index("ix_order_items_sku_lower", func.lower(OrderItem.sku))
# plan_status=X ordered by request id: a range scan here, then request rows by primary key.
Index("ix_cancellation_plans_status_request_id", CancellationPlan.status, CancellationPlan.request_id)


__all__ = ["TAG_KEY_MAX_LENGTH", "CancellationRequestTag", "Tag"]
