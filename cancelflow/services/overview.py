"""The figures of the console's overview, read in one session: counts by request and plan status, the
oldest request waiting for its fulfillment service, the money moved today and the requests created and
completed per hour over the last 7 days.

No figure reads the whole history: the all-time counts and sums come from the tally rows
(`services.tallies`), the waiting plan from a partial index on the live status, and the windowed figures
(today's money, the last 7 days) from indexes on their time columns. The console renders them and queries
nothing itself. The money and the waiting plan are read as `/metrics` reads them (`money_moved`,
`oldest_confirmation_waiting` are shared with `services.metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any, Final, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cancelflow.models import CancellationPlan, CancellationRequest, MoneyTransaction
from cancelflow.models.audit import Event
from cancelflow.models.enums import PlanStatus, RefundTarget, RequestStatus
from cancelflow.services import tallies
from cancelflow.services.clock import now

HOURS: Final = 7 * 24
E = TypeVar("E", bound=Enum)


@dataclass(frozen=True, slots=True)
class Waiting:
    """The plan waiting longest for its fulfillment service's answer, and since when."""

    request_id: int
    plan_id: int
    since: datetime


@dataclass(frozen=True, slots=True)
class HourBucket:
    hour: datetime  # the start of the hour, UTC
    created: int
    completed: int


@dataclass(frozen=True, slots=True)
class Overview:
    requests: Mapping[RequestStatus, int]
    plans: Mapping[PlanStatus, int]
    oldest_waiting: Waiting | None
    money_today: Mapping[tuple[RefundTarget, str], Decimal]
    hourly: Sequence[HourBucket]
    at: datetime


def counts_of(session: Session, name: str, values: type[E]) -> dict[E, int]:
    """The tally `name` (`services.tallies`) counted by its first key, as `values` (0 for a value with none)."""
    counted = tallies.counts(session, name)
    return {value: counted.get(value.value, 0) for value in values}


def oldest_confirmation_waiting(session: Session) -> Waiting | None:
    """The plan in `confirmation_waiting` with the oldest last change: a waiting plan is only touched by
    its reply, so its `modified_date` is when it started waiting."""
    row = session.execute(
        select(CancellationPlan.request_id, CancellationPlan.id, CancellationPlan.modified_date)
        .where(CancellationPlan.status == PlanStatus.confirmation_waiting)
        .order_by(CancellationPlan.modified_date, CancellationPlan.id)
        .limit(1)
    ).first()
    return None if row is None else Waiting(row[0], row[1], row[2])


def money_moved(
    session: Session, *, since: datetime | None = None
) -> dict[tuple[RefundTarget, str], Decimal]:
    """The money moved to customers by refund target and (upper-case) currency, since `since` if given.
    Every movement, loyalty credits included, is a `money_transactions` row: all of them are tallied; the
    ones since `since` are read through the index on their time."""
    if since is None:
        return {
            (RefundTarget(target), code): amount
            for (target, code), (_, amount) in tallies.sums(session, "money").items()
        }
    currency = func.upper(MoneyTransaction.currency)
    query = select(MoneyTransaction.target, currency, func.sum(MoneyTransaction.amount)).group_by(
        MoneyTransaction.target, currency
    )
    query = query.where(MoneyTransaction.created_date >= since)
    return {(target, code): total for target, code, total in session.execute(query)}


def _per_hour(session: Session, column: Any, start: datetime, *conditions: Any) -> dict[datetime, int]:
    hour = func.date_trunc("hour", func.timezone("UTC", column))
    query = select(hour, func.count()).where(column >= start, *conditions).group_by(hour)
    return {bucket.replace(tzinfo=UTC): n for bucket, n in session.execute(query)}


def hourly(session: Session, *, at: datetime | None = None) -> list[HourBucket]:
    """Requests created and completed in each of the last `HOURS` hours (UTC), the oldest hour first, the
    current one last; an hour with neither is there with zeros.

    Created is `cancellation_requests.created_date`. Completed is the time of the request's move to
    `completed` in the event log, not the request's `modified_date`: that one moves again with any later
    change of the row (a tag, a note), while the event is written once, in the transaction of the move.
    """
    current = (at or now()).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    start = current - timedelta(hours=HOURS - 1)
    created = _per_hour(session, CancellationRequest.created_date, start)
    completed = _per_hour(
        session,
        Event.created_date,
        start,
        Event.entity == "request",
        Event.to_status == RequestStatus.completed.value,
    )
    hours = [start + timedelta(hours=i) for i in range(HOURS)]
    return [HourBucket(h, created.get(h, 0), completed.get(h, 0)) for h in hours]


def overview(session: Session) -> Overview:
    at = now()
    midnight = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return Overview(
        requests=counts_of(session, "requests", RequestStatus),
        plans=counts_of(session, "plans", PlanStatus),
        oldest_waiting=oldest_confirmation_waiting(session),
        money_today=money_moved(session, since=midnight),
        hourly=hourly(session, at=at),
        at=at,
    )
