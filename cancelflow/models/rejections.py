"""Storefront messages the intake refused before any request existed (unknown item, malformed message…)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from cancelflow.models.base import Base


class RejectedMessage(Base):
    """The last refusal of a `cancellations.submit` message, by its client_request_id.

    A message that breaks a business rule is stored as a `rejected` request instead; this row is for the ones
    that could not become a request at all, so the storefront (and `cancelflow submit`) can learn why without
    reading the worker's log. One row per client_request_id: a repeat updates it and counts.
    """

    __tablename__ = "rejected_messages"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    client_request_id: Mapped[str] = mapped_column(String(200), unique=True)
    code: Mapped[str] = mapped_column(String(60))
    message: Mapped[str] = mapped_column(Text)
    # {"field": ["reason", …]}, as the HTTP API would answer them
    errors: Mapped[dict[str, list[str]]] = mapped_column(JSONB, default=dict)
    times: Mapped[int] = mapped_column(Integer, default=1)
    rejected_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )
