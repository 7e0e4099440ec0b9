"""All-time counts and sums that stay cheap whatever the history: read from `tallies`, never by scanning.

Triggers (migration 0018_history_costs) add a signed delta row for every key a statement changed, in the
statement's own transaction, whoever wrote it (the workflow, a bulk job, an operator in psql): a commit
brings its deltas, a rollback or a crash takes them with it, so the sums are exact at every snapshot.
Rows are appended, never updated, so concurrent writers do not queue on a counter row. `compact` (run by
the beat's sweep) folds each key's rows into one so a read stays a few dozen rows.

Tallied (name: first key, second key, amount):
    requests: cancellation_requests.status
    plans: cancellation_plans.status, upper(currency)
    steps: workflow_steps.status, kind
    deliveries: webhook_deliveries.status
    money: money_transactions.target, upper(currency), sum of amount
    orders: upper(orders.currency)
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Final

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from cancelflow.models.tallies import Tally

COMPACT_LOCK_KEY: Final = 0x74616C6C  # pg advisory lock id held by the one running compaction ("tall")

_COMPACT = text(
    """
    WITH folded AS (
        DELETE FROM tallies
        WHERE (name, k1, k2) IN (SELECT name, k1, k2 FROM tallies GROUP BY 1, 2, 3 HAVING count(*) > 1)
        RETURNING name, k1, k2, n, amount
    )
    INSERT INTO tallies (name, k1, k2, n, amount)
    SELECT name, k1, k2, sum(n), sum(amount) FROM folded GROUP BY 1, 2, 3
    HAVING sum(n) <> 0 OR sum(amount) <> 0
    RETURNING 1
    """
)


def sums(session: Session, name: str) -> dict[tuple[str, str], tuple[int, Decimal]]:
    """(first key, second key) -> (count, amount) of `name`; a key with nothing left is absent."""
    rows = session.execute(
        select(Tally.k1, Tally.k2, func.sum(Tally.n), func.sum(Tally.amount))
        .where(Tally.name == name)
        .group_by(Tally.k1, Tally.k2)
    )
    return {(k1, k2): (int(n), Decimal(amount)) for k1, k2, n, amount in rows if n or amount}


def counts(session: Session, name: str) -> dict[str, int]:
    """First key -> count of `name`, summed over the second key."""
    out: dict[str, int] = defaultdict(int)
    for (k1, _), (n, _) in sums(session, name).items():
        out[k1] += n
    return {k: n for k, n in out.items() if n}


def compact(session: Session) -> int:
    """Fold the delta rows of each key into one; returns the keys folded. A second compaction running
    at the same time does nothing (transaction-scoped advisory lock). Deltas committed while this runs are
    not seen by its snapshot and stay for the next one; the sums are the same before and after."""
    if not session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": COMPACT_LOCK_KEY}).scalar():
        return 0
    return len(session.execute(_COMPACT).all())


__all__ = ["compact", "counts", "sums"]
