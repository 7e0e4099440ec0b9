"""API tokens. Only a SHA-256 of each key is stored; the key is shown once, when it is made."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from cancelflow.models.base import Base, TimestampMixin
from cancelflow.models.catalog import enum_column
from cancelflow.models.enums import TokenKind


class ApiToken(TimestampMixin, Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(12))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[TokenKind] = mapped_column(enum_column(TokenKind, "token_kind"))
    fulfillment_service_id: Mapped[int | None] = mapped_column(
        ForeignKey("fulfillment_services.id"), nullable=True
    )
    channel_id: Mapped[int | None] = mapped_column(ForeignKey("channels.id"), nullable=True)
    permissions: Mapped[list[str]] = mapped_column(JSONB, default=list)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The user who logged in for this token (POST /api/v1/auth/login/); None for tokens made by the CLI.
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True
    )
