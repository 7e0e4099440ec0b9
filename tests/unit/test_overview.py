"""The overview's figures read from real rows: each test compares the figures before and after the rows it
adds, in a session that is rolled back, so what other tests committed does not matter."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise

from sqlalchemy import update
from sqlalchemy.orm import Session

from cancelflow.models import CancellationPlan, CancellationRequest, MoneyTransaction
from cancelflow.models.audit import Event
from cancelflow.models.enums import PlanStatus, RefundTarget, RequestStatus, StepKind
from cancelflow.services import overview
from cancelflow.services.clock import now
from tests.factories import approved_plan, new_order, new_request, step_of


def test_counts_by_request_and_plan_status(session: Session) -> None:
    before = overview.overview(session)
    order = new_order(quantity=3, session=session)
    new_request(order, session=session, quantity=1)
    new_request(order, session=session, quantity=1)
    approved_plan(session)  # one more request, approved, with a waiting plan
    after = overview.overview(session)
    assert after.requests[RequestStatus.waiting] - before.requests[RequestStatus.waiting] == 2
    assert after.requests[RequestStatus.approved] - before.requests[RequestStatus.approved] == 1
    assert after.plans[PlanStatus.waiting] - before.plans[PlanStatus.waiting] == 1
    # Every status is there, with 0 when no row has it.
    assert set(after.requests) == set(RequestStatus)
    assert set(after.plans) == set(PlanStatus)


def test_oldest_waiting_is_the_plan_waiting_longest(session: Session) -> None:
    long_ago = now() - timedelta(days=400)
    plans = [approved_plan(session) for _ in range(2)]
    for days, plan in enumerate(plans):
        session.execute(
            update(CancellationPlan)
            .where(CancellationPlan.id == plan.id)
            .values(status=PlanStatus.confirmation_waiting, modified_date=long_ago + timedelta(days=days))
        )
    oldest = overview.oldest_confirmation_waiting(session)
    assert oldest is not None
    assert (oldest.request_id, oldest.plan_id) == (plans[0].request_id, plans[0].id)
    assert oldest.since == long_ago
    assert overview.overview(session).oldest_waiting == oldest


def _moved(
    session: Session, plan: CancellationPlan, target: RefundTarget, amount: str, currency: str, at: datetime
) -> None:
    step = step_of(session, plan, StepKind.route)
    session.add(
        MoneyTransaction(
            plan_id=plan.id,
            step_id=step.id,
            target=target,
            amount=Decimal(amount),
            currency=currency,
            idempotency_key=uuid.uuid4().hex,
            created_date=at,
        )
    )
    session.flush()


def test_money_today_by_target_and_currency(session: Session) -> None:
    before = overview.overview(session).money_today
    plan = approved_plan(session)
    today = now()
    yesterday = today.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(hours=1)
    _moved(session, plan, RefundTarget.original_payment, "10.50", "eur", today)
    _moved(session, plan, RefundTarget.original_payment, "4.50", "EUR", today)
    _moved(session, plan, RefundTarget.loyalty_money, "7.00", "TRY", today)
    _moved(session, plan, RefundTarget.bank_transfer, "99.00", "EUR", yesterday)  # not today
    after = overview.overview(session).money_today

    def delta(target: RefundTarget, code: str) -> Decimal:
        return after.get((target, code), Decimal(0)) - before.get((target, code), Decimal(0))

    assert delta(RefundTarget.original_payment, "EUR") == Decimal("15.00")
    assert delta(RefundTarget.loyalty_money, "TRY") == Decimal("7.00")
    assert delta(RefundTarget.bank_transfer, "EUR") == 0
    # Without a start, every movement counts (what /metrics reports).
    assert overview.money_moved(session)[(RefundTarget.bank_transfer, "EUR")] >= Decimal("99.00")


def test_hourly_series_of_created_and_completed(session: Session) -> None:
    at = now()
    current = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    before = overview.hourly(session, at=at)
    order = new_order(quantity=3, session=session)
    made = [new_request(order, session=session, quantity=1) for _ in range(3)]
    three_hours_ago = current - timedelta(hours=3, minutes=-20)  # 20 minutes into that hour
    eight_days_ago = current - timedelta(days=8)  # outside the window
    for request, created in zip(made, (three_hours_ago, three_hours_ago, eight_days_ago), strict=True):
        session.execute(
            update(CancellationRequest)
            .where(CancellationRequest.id == request.id)
            .values(created_date=created)
        )
    an_hour_ago = current - timedelta(hours=1)
    session.add_all(  # the request's move to completed; a plan's completion is not a request's
        Event(
            entity=entity,
            entity_id=made[0].id,
            kind="status_changed",
            from_status=None,
            to_status="completed",
            data={},
            created_date=an_hour_ago,
        )
        for entity in ("request", "plan")
    )
    session.flush()
    after = overview.hourly(session, at=at)

    assert len(after) == overview.HOURS == 168
    assert after[-1].hour == current
    assert after[0].hour == current - timedelta(hours=167)
    assert all(b.hour - a.hour == timedelta(hours=1) for a, b in pairwise(after))
    created = {
        a.hour: a.created - b.created for a, b in zip(after, before, strict=True) if a.created != b.created
    }
    completed = {
        a.hour: a.completed - b.completed
        for a, b in zip(after, before, strict=True)
        if a.completed != b.completed
    }
    assert created == {current - timedelta(hours=3): 2}
    assert completed == {current - timedelta(hours=1): 1}
