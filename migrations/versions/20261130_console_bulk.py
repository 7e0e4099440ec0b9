"""Bulk decisions: a bulk job counts the requests it left as they were, and keeps a few of the reasons.

Revision ID: 0016_console_bulk
Revises: 0015
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0016_console_bulk"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("bulk_jobs", sa.Column("skipped", sa.Integer(), server_default="0", nullable=False))
    op.add_column(
        "bulk_jobs",
        sa.Column("skips", postgresql.JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("bulk_jobs", "skips")
    op.drop_column("bulk_jobs", "skipped")
