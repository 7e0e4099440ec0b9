"""Number the fulfillment orders and lines cancelflow creates (splits) from 10^15 up.

Imported fulfillment orders carry the order system's ids; a split used to take the next id above the
largest imported one, which the order system could hand out later for a fulfillment order of its own.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

FLOOR = 10**15
TABLES = ("fulfillment_orders", "fulfillment_order_line_items")


def upgrade() -> None:
    for table in TABLES:
        op.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608 - fixed table names
            f"GREATEST({FLOOR}, (SELECT COALESCE(MAX(id), 0) + 1 FROM {table})), false)"
        )


def downgrade() -> None:
    # Ids already given out stay valid; the sequences simply keep counting from where they are.
    pass
