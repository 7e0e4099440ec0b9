"""Tally rows: signed deltas of the all-time counts and sums, written by triggers in the transaction of the
change (migration 0018_history_costs), summed by `services.tallies`."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import BigInteger, Identity, Index, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from cancelflow.models.base import Base


class Tally(Base):
    __tablename__ = "tallies"
    __table_args__ = (Index("ix_tallies_key", "name", "k1", "k2"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    k1: Mapped[str] = mapped_column(String(60))
    k2: Mapped[str] = mapped_column(String(60))
    n: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[Decimal] = mapped_column(Numeric(20, 2))
