"""Rewrite stored outbound errors that quote a remote answer as the short reasons used from now on.

Webhook attempts and deliveries, and fulfillment-notification steps, used to store the first 300 bytes of
the destination's answer (`HTTP 500: <body>`) or the connection error's text, which told a port's state.
They now keep `http <status>`, `unreachable` or `invalid url`; the rows written before are rewritten the same
way. Operator-configured destinations (payment gateway, bank) are not touched.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# (table, column, the prefix the stored text keeps; '' for none)
TARGETS = (
    ("webhook_attempts", "error", ""),
    ("webhook_deliveries", "last_error", ""),
    ("workflow_steps", "last_error", "fulfillment notification: "),
)


def upgrade() -> None:
    bind = op.get_bind()
    for table, column, prefix in TARGETS:
        where = f"{column} LIKE :like" + (" AND kind = 'notify'" if table == "workflow_steps" else "")
        # The old texts: "HTTP 500: body" (webhooks), "HTTP 500 body" (notifications), "ConnectError: …".
        for pattern, replacement in (
            (r"^HTTP ([0-9]{3})[: ].*$", r"http \1"),
            (r"^HTTP ([0-9]{3})$", r"http \1"),
            (r"^(InvalidURL|UnsupportedProtocol): .*$", "invalid url"),
            (r"^[A-Z][A-Za-z]*: .*$", "unreachable"),
        ):
            bind.execute(
                sa.text(
                    f"UPDATE {table} SET {column} = :prefix || regexp_replace("  # noqa: S608
                    f"substr({column}, length(:prefix) + 1), :pattern, :replacement, 's') "
                    f"WHERE {where} AND substr({column}, length(:prefix) + 1) ~ :pattern"
                ),
                {"prefix": prefix, "like": prefix + "%", "pattern": pattern, "replacement": replacement},
            )


def downgrade() -> None:
    pass  # the remote answers the old texts quoted are gone on purpose
