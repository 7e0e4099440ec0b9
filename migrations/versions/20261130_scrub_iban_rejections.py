"""Rewrite stored IBAN rejection messages that quote the IBAN as the fixed reasons used from now on.

Intake used to store schwifty's error text (`IBAN is invalid: Invalid characters in IBAN DE89-…`,
`Invalid BBAN structure: '…'`), which carries the IBAN or its account number, and every reader of the
request was shown it. The reason is kept (read from schwifty's wording); the IBAN is dropped.

Revision ID: 0011_pii
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_pii"
down_revision = "0010"
branch_labels = None
depends_on = None

# schwifty's wording -> the fixed reason of `services.iban` (the first LIKE that matches wins).
REASONS = (
    ("%Invalid characters in IBAN%", "only letters, digits and spaces are allowed"),
    ("%Invalid IBAN length%", "wrong length for its country"),
    ("%Invalid checksum digits%", "wrong check digits"),
    ("%Invalid BBAN structure%", "does not match its country's format"),
    ("%country code%", "unknown country code"),
    ("%bank code%", "the bank code does not match its country's format"),
    ("%branch code%", "the branch code does not match its country's format"),
    ("%ccount code%", "the account number fails its national check"),
    ("%national checksum%", "the account number fails its national check"),
    ("%remainder%", "the account number fails its national check"),
)
PREFIX = "IBAN is invalid: "
# The reasons intake stores from now on: left as they are.
CURRENT = (
    *{reason for _, reason in REASONS},
    "not a valid IBAN",
)


def upgrade() -> None:
    whens = " ".join(f"WHEN rejection_message LIKE :p{i} THEN :r{i}" for i in range(len(REASONS)))
    params: dict[str, str] = {}
    for i, (pattern, reason) in enumerate(REASONS):
        params[f"p{i}"], params[f"r{i}"] = pattern, PREFIX + reason
    statement = sa.text(
        f"UPDATE cancellation_requests SET rejection_message = CASE {whens} ELSE :other END "  # noqa: S608
        "WHERE rejection_code = 'invalid_iban' AND rejection_message IS NOT NULL "
        "AND NOT (rejection_message = ANY(:current))"
    )
    current = sorted(PREFIX + reason for reason in CURRENT)
    op.get_bind().execute(statement, {**params, "other": PREFIX + "not a valid IBAN", "current": current})


def downgrade() -> None:
    pass  # the IBANs the old messages quoted are gone on purpose
