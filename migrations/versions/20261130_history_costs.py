"""Costs that do not grow with history: tally rows for the all-time counts and sums, partial indexes on the
live statuses, and time indexes for the windowed figures.

`tallies` holds signed deltas: a statement-level trigger on each tallied table adds one row per key it
changed (+1 for a row that arrived at a key, -1 for one that left it, and the money amount with the same
sign), in the transaction of the change. A reader sums the rows of a name; the beat's sweep folds the rows
of each key into one (`services.tallies.compact`). Append-only, so two transactions that move requests to
the same status never wait for each other on a counter row; a rolled-back change takes its delta with it.

Revision ID: 0018_history_costs
Revises: 0015
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018_history_costs"
down_revision = "0017_saved_views"
branch_labels = None
depends_on = None

# name -> (table, first key, second key, amount): the SQL expressions over one row of the table.
TALLIED = {
    "requests": ("cancellation_requests", "status", "''", "0"),
    "plans": ("cancellation_plans", "status", "upper(currency)", "0"),
    "steps": ("workflow_steps", "status", "kind", "0"),
    "deliveries": ("webhook_deliveries", "status", "''", "0"),
    "money": ("money_transactions", "target", "upper(currency)", "amount"),
    "orders": ("orders", "upper(currency)", "''", "0"),
}

TALLY_FUNCTION = r"""
CREATE FUNCTION tally() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    keys text := format('%s AS k1, %s AS k2, %s AS a', TG_ARGV[1], TG_ARGV[2], TG_ARGV[3]);
    rows text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        rows := format('SELECT %s, 1 AS n FROM new_rows', keys);
    ELSIF TG_OP = 'DELETE' THEN
        rows := format('SELECT %s, -1 AS n FROM old_rows', keys);
    ELSE
        rows := format('SELECT %s, 1 AS n FROM new_rows UNION ALL SELECT %s, -1 AS n FROM old_rows', keys, keys);
    END IF;
    EXECUTE format(
        'INSERT INTO tallies (name, k1, k2, n, amount) SELECT %L, k1, k2, sum(n), sum(n * a) FROM (%s) d '
        'GROUP BY k1, k2 HAVING sum(n) <> 0 OR sum(n * a) <> 0', TG_ARGV[0], rows);
    RETURN NULL;
END $$;
"""

TRUNCATE_FUNCTION = r"""
CREATE FUNCTION tally_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM tallies WHERE name = TG_ARGV[0];
    RETURN NULL;
END $$;
"""


def _quote(expression: str) -> str:
    return "'" + expression.replace("'", "''") + "'"


def upgrade() -> None:
    op.create_table(
        "tallies",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("k1", sa.String(60), nullable=False),
        sa.Column("k2", sa.String(60), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.Numeric(20, 2), nullable=False),
    )
    op.create_index("ix_tallies_key", "tallies", ["name", "k1", "k2"])
    op.execute(TALLY_FUNCTION)
    op.execute(TRUNCATE_FUNCTION)
    for name, (table, k1, k2, amount) in TALLIED.items():
        args = f"'{name}', {_quote(k1)}, {_quote(k2)}, {_quote(amount)}"
        for event, referencing in (
            ("INSERT", "NEW TABLE AS new_rows"),
            ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
            ("DELETE", "OLD TABLE AS old_rows"),
        ):
            op.execute(
                f"CREATE TRIGGER tally_{event.lower()} AFTER {event} ON {table} REFERENCING {referencing} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION tally({args})"
            )
        op.execute(
            f"CREATE TRIGGER tally_truncate AFTER TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION tally_truncate('{name}')"
        )
        # The history so far, counted once (the triggers above keep it from here, in this transaction).
        op.execute(
            f"INSERT INTO tallies (name, k1, k2, n, amount) SELECT '{name}', {k1}, {k2}, count(*), "  # noqa: S608 - fixed names
            f"coalesce(sum({amount}), 0) FROM {table} GROUP BY 2, 3"
        )

    # Live statuses: partial indexes hold only the rows still in play, whatever the history.
    op.execute(
        "CREATE INDEX ix_cancellation_plans_waiting_since ON cancellation_plans (modified_date, id) "
        "WHERE status = 'confirmation_waiting'"
    )
    op.execute(
        "CREATE INDEX ix_cancellation_plans_escalated ON cancellation_plans (escalated_at, id) "
        "WHERE status = 'confirmation_waiting' AND escalated_at IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX ix_cancellation_plans_chase ON cancellation_plans (deadline_at, id) "
        "WHERE status = 'confirmation_waiting' AND escalated_at IS NULL"
    )
    # The `escalated` filter (yes or no) reads only the plans ever escalated.
    op.execute(
        "CREATE INDEX ix_cancellation_plans_ever_escalated ON cancellation_plans (request_id) "
        "WHERE escalated_at IS NOT NULL"
    )
    # Windowed figures (the last 7 days, today): an index on the time reads only the window.
    op.create_index("ix_cancellation_requests_created_date", "cancellation_requests", ["created_date"])
    op.create_index("ix_cancellation_requests_modified_date", "cancellation_requests", ["modified_date"])
    op.create_index("ix_money_transactions_created_date", "money_transactions", ["created_date"])
    op.execute(
        "CREATE INDEX ix_events_request_completed ON events (created_date) "
        "WHERE entity = 'request' AND to_status = 'completed'"
    )


def downgrade() -> None:
    op.drop_index("ix_events_request_completed", table_name="events")
    op.drop_index("ix_money_transactions_created_date", table_name="money_transactions")
    op.drop_index("ix_cancellation_requests_modified_date", table_name="cancellation_requests")
    op.drop_index("ix_cancellation_requests_created_date", table_name="cancellation_requests")
    op.drop_index("ix_cancellation_plans_ever_escalated", table_name="cancellation_plans")
    op.drop_index("ix_cancellation_plans_chase", table_name="cancellation_plans")
    op.drop_index("ix_cancellation_plans_escalated", table_name="cancellation_plans")
    op.drop_index("ix_cancellation_plans_waiting_since", table_name="cancellation_plans")
    for table, *_ in TALLIED.values():
        for event in ("insert", "update", "delete", "truncate"):
            op.execute(f"DROP TRIGGER tally_{event} ON {table}")
    op.execute("DROP FUNCTION tally_truncate()")
    op.execute("DROP FUNCTION tally()")
    op.drop_table("tallies")
