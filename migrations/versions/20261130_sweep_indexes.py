"""Partial indexes for what the beat reads every tick: the fulfillment orders waiting for a reply, and the
finished exports whose files may expire.

`fulfillment_orders (cancellation_plan_id) WHERE request_status = 'cancellation_requested'` holds only the
orders still waiting for their service (hundreds, not the million of the history): the reply chase's
reminder probe and its `_waiting`, and the escalation list's unanswered orders, read it.
`export_jobs (finished_at) WHERE status = 'done'` holds only the exports whose files are still on disk:
`exports.expire` reads it instead of every export ever made.

Built `CONCURRENTLY` (outside the migration's transaction), so a deploy does not block writes to
`fulfillment_orders` while the index is built; a build that failed half-way leaves an invalid index, which
is dropped first when the migration runs again.

Revision ID: 0019_sweep_indexes
Revises: 0018_history_costs
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0019_sweep_indexes"
down_revision = "0018_history_costs"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_fulfillment_orders_awaiting_reply": (
        "fulfillment_orders (cancellation_plan_id) WHERE request_status = 'cancellation_requested'"
    ),
    "ix_export_jobs_expiring": "export_jobs (finished_at) WHERE status = 'done'",
}


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, definition in INDEXES.items():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            op.execute(f"CREATE INDEX CONCURRENTLY {name} ON {definition}")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name in INDEXES:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
