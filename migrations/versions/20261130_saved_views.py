"""Saved views: a staff user's named filter states of the console's requests list; and the partial index
the dead-steps queue pages by.

Revision ID: 0017_saved_views
Revises: 0015
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_saved_views"
down_revision = "0016_console_bulk"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_saved_views",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("query", sa.String(length=4000), nullable=False),
        sa.Column(
            "created_date", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "modified_date", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_console_saved_views_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_saved_views")),
        # Also the index a user's list is read by.
        sa.UniqueConstraint("user_id", "name", name=op.f("uq_console_saved_views_user_id_name")),
    )
    # Dead steps are few: the index holds only them, so building it reads the table once and keeps nothing else.
    op.create_index(
        "ix_workflow_steps_dead",
        "workflow_steps",
        ["modified_date", "id"],
        postgresql_where=sa.text("status = 'dead'"),
    )


def downgrade() -> None:
    op.drop_index("ix_workflow_steps_dead", table_name="workflow_steps")
    op.drop_table("console_saved_views")
