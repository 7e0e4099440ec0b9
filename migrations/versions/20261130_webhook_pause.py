"""Pause a webhook subscription whose receiver keeps failing.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "webhook_subscriptions",
        sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.add_column("webhook_subscriptions", sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("webhook_subscriptions", sa.Column("pause_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("webhook_subscriptions", "pause_reason")
    op.drop_column("webhook_subscriptions", "paused_at")
    op.drop_column("webhook_subscriptions", "consecutive_failures")
