"""Cancellation requests, their plans, the workflow steps that carry them, and the money they move."""

from __future__ import annotations

import uuid as uuid_lib
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from cancelflow.models.base import Base, TimestampMixin
from cancelflow.models.catalog import enum_column
from cancelflow.models.enums import (
    CancellationType,
    PlanStatus,
    RefundTarget,
    RequestStatus,
    StepKind,
    StepStatus,
)


class CancellationRequest(TimestampMixin, Base):
    __tablename__ = "cancellation_requests"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        Index("ix_cancellation_requests_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    uuid: Mapped[uuid_lib.UUID] = mapped_column(Uuid, unique=True, default=uuid_lib.uuid4)
    order_item_id: Mapped[int] = mapped_column(ForeignKey("order_items.id"), index=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id"), index=True)
    reason_id: Mapped[int] = mapped_column(ForeignKey("cancellation_reasons.id"), index=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancellation_type: Mapped[CancellationType] = mapped_column(
        enum_column(CancellationType, "cancellation_type")
    )
    status: Mapped[RequestStatus] = mapped_column(
        enum_column(RequestStatus, "request_status"), default=RequestStatus.waiting
    )
    iban: Mapped[str | None] = mapped_column(String(34), nullable=True)
    holder_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    quantity: Mapped[int] = mapped_column(Integer)
    fully_refund_as_loyalty_money: Mapped[bool] = mapped_column(Boolean, default=False)
    # Idempotency of the storefront message / HTTP Idempotency-Key.
    client_request_id: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    rejection_code: Mapped[str | None] = mapped_column(String(40), nullable=True)
    rejection_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    attributes: Mapped[dict[str, object]] = mapped_column(JSONB, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)


class CancellationPlan(TimestampMixin, Base):
    __tablename__ = "cancellation_plans"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="amount_non_negative"),
        Index("ix_cancellation_plans_status_deadline", "status", "deadline_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("cancellation_requests.id"), unique=True)
    status: Mapped[PlanStatus] = mapped_column(
        enum_column(PlanStatus, "plan_status"), default=PlanStatus.waiting
    )
    plan_type: Mapped[CancellationType] = mapped_column(enum_column(CancellationType, "cancellation_type"))
    amount: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    currency: Mapped[str] = mapped_column(String(3))
    refund_target: Mapped[RefundTarget] = mapped_column(enum_column(RefundTarget, "refund_target"))
    # When the fulfillment service's reply is due (confirmation_waiting only).
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    escalated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The status a failed plan resumes from when replayed.
    failed_from: Mapped[str | None] = mapped_column(String(40), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)


class WorkflowStep(TimestampMixin, Base):
    """One unit of follow-up work. The row is the truth; the broker message only nudges it."""

    __tablename__ = "workflow_steps"
    __table_args__ = (
        Index(
            "ix_workflow_steps_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_workflow_steps_plan_kind", "plan_id", "kind"),
        # The dead-steps queue, read by keyset on (modified_date, id): dead steps are few among millions.
        Index("ix_workflow_steps_dead", "modified_date", "id", postgresql_where=text("status = 'dead'")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # None for work not tied to a request (a cancellation request sent by hand through the API).
    request_id: Mapped[int | None] = mapped_column(
        ForeignKey("cancellation_requests.id"), index=True, nullable=True
    )
    plan_id: Mapped[int | None] = mapped_column(ForeignKey("cancellation_plans.id"), nullable=True)
    kind: Mapped[StepKind] = mapped_column(enum_column(StepKind, "step_kind"))
    status: Mapped[StepStatus] = mapped_column(
        enum_column(StepStatus, "step_status"), default=StepStatus.pending
    )
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=8)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    # What the step acts on besides the plan (e.g. the fulfillment order a notification is about).
    fulfillment_order_id: Mapped[int | None] = mapped_column(
        ForeignKey("fulfillment_orders.id"), nullable=True
    )
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, object]] = mapped_column(JSONB, default=dict)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)


class MoneyTransaction(Base):
    """One movement of money to the customer. The idempotency key makes a second run a no-op."""

    __tablename__ = "money_transactions"
    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("cancellation_plans.id"), index=True)
    step_id: Mapped[int] = mapped_column(ForeignKey("workflow_steps.id"), index=True)
    target: Mapped[RefundTarget] = mapped_column(enum_column(RefundTarget, "refund_target"))
    amount: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    currency: Mapped[str] = mapped_column(String(3))
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    external_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_date: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))


class LoyaltyLedgerEntry(Base):
    __tablename__ = "loyalty_ledger"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    plan_id: Mapped[int | None] = mapped_column(ForeignKey("cancellation_plans.id"), nullable=True)
    amount: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    currency: Mapped[str] = mapped_column(String(3))
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(String(300), default="")
    created_date: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))
