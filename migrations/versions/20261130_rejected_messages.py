"""Storefront messages refused at intake, by client_request_id

Revision ID: 0012
Revises: 0011_pii
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0011_pii"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rejected_messages",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("client_request_id", sa.String(length=200), nullable=False),
        sa.Column("code", sa.String(length=60), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("errors", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("times", sa.Integer(), nullable=False),
        sa.Column(
            "rejected_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejected_messages")),
        sa.UniqueConstraint("client_request_id", name=op.f("uq_rejected_messages_client_request_id")),
    )
    op.create_index(
        op.f("ix_rejected_messages_rejected_at"), "rejected_messages", ["rejected_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_rejected_messages_rejected_at"), table_name="rejected_messages")
    op.drop_table("rejected_messages")
