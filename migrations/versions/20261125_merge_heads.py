"""Merge the users/idempotency, webhooks and tags/jobs branches.

Revision ID: 0009
Revises: 0002, 0003, 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

revision = "0009"
down_revision = ("0002", "0003", "0004")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
