"""Prometheus gauges computed from PostgreSQL at scrape time.

The database is the source of truth, so the numbers are read from it on every scrape rather than
counted in a process: any API replica answers the same, and a restart loses nothing. Each query is an
aggregate over an indexed status column; the whole scrape is one short read-only transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from cancelflow.models import CancellationPlan, CancellationRequest, MoneyTransaction, WorkflowStep
from cancelflow.models.enums import PlanStatus, RequestStatus, StepKind, StepStatus
from cancelflow.services.clock import now

WEBHOOK_DELIVERIES_TABLE = "webhook_deliveries"


def _gauge(
    name: str, documentation: str, labels: list[str], rows: Iterator[tuple[object, ...]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for *values, number in rows:
        family.add_metric([str(v) for v in values], float(number))  # type: ignore[arg-type]
    return family


def collect_from(session: Session) -> list[Metric]:
    """Every gauge, read in `session`; statuses with no rows are reported as 0 so series never vanish."""
    metrics: list[Metric] = []

    requests = dict(
        session.execute(select(CancellationRequest.status, func.count()).group_by(CancellationRequest.status))
        .tuples()
        .all()
    )
    metrics.append(
        _gauge(
            "cancelflow_requests",
            "Cancellation requests by status.",
            ["status"],
            iter([(s.value, requests.get(s, 0)) for s in RequestStatus]),
        )
    )

    plans = dict(
        session.execute(select(CancellationPlan.status, func.count()).group_by(CancellationPlan.status))
        .tuples()
        .all()
    )
    metrics.append(
        _gauge(
            "cancelflow_plans",
            "Cancellation plans by status.",
            ["status"],
            iter([(s.value, plans.get(s, 0)) for s in PlanStatus]),
        )
    )

    steps = {
        (status, kind): n
        for status, kind, n in session.execute(
            select(WorkflowStep.status, WorkflowStep.kind, func.count()).group_by(
                WorkflowStep.status, WorkflowStep.kind
            )
        ).tuples()
    }
    metrics.append(
        _gauge(
            "cancelflow_steps",
            "Workflow steps by status and kind.",
            ["status", "kind"],
            iter([(s.value, k.value, steps.get((s, k), 0)) for s in StepStatus for k in StepKind]),
        )
    )

    # The plan's last change is when it started waiting (a waiting plan is only touched by its reply).
    oldest: datetime | None = session.scalar(
        select(func.min(CancellationPlan.modified_date)).where(
            CancellationPlan.status == PlanStatus.confirmation_waiting
        )
    )
    age = GaugeMetricFamily(
        "cancelflow_oldest_confirmation_waiting_seconds",
        "Age in seconds of the oldest plan waiting for its fulfillment service's answer (0 when none).",
    )
    age.add_metric([], max(0.0, (now() - oldest).total_seconds()) if oldest is not None else 0.0)
    metrics.append(age)

    money = GaugeMetricFamily(
        "cancelflow_money_moved_total",
        "Sum of the money moved back to customers, by refund target and currency.",
        labels=["target", "currency"],
    )
    for target, currency, total in session.execute(
        select(
            MoneyTransaction.target, MoneyTransaction.currency, func.sum(MoneyTransaction.amount)
        ).group_by(MoneyTransaction.target, MoneyTransaction.currency)
    ).tuples():
        money.add_metric([target.value, currency.upper()], float(total or 0))
    metrics.append(money)

    metrics.extend(_webhook_deliveries(session))
    metrics.extend(_webhook_subscriptions(session))
    return metrics


def _webhook_subscriptions(session: Session) -> list[Metric]:
    """Active subscriptions, paused or not: a paused one means a storefront hears nothing until resumed."""
    from cancelflow.models import WebhookSubscription

    connection = session.connection()
    columns = {c["name"] for c in inspect(connection).get_columns(WebhookSubscription.__tablename__)}
    if "paused_at" not in columns:
        return []
    paused = WebhookSubscription.paused_at.is_not(None)
    counts: dict[bool, int] = dict(
        session.execute(
            select(paused, func.count()).where(WebhookSubscription.is_active).group_by(paused)
        ).all()
    )
    return [
        _gauge(
            "cancelflow_webhook_subscriptions",
            "Active webhook subscriptions by status (paused: too many failed attempts in a row).",
            ["status"],
            iter([("active", counts.get(False, 0)), ("paused", counts.get(True, 0))]),
        )
    ]


def _webhook_deliveries(session: Session) -> list[Metric]:
    """Deliveries by outcome, once the outbox table exists (it arrives with the webhooks migration)."""
    connection = session.connection()
    if not inspect(connection).has_table(WEBHOOK_DELIVERIES_TABLE):
        return []
    columns = {c["name"] for c in inspect(connection).get_columns(WEBHOOK_DELIVERIES_TABLE)}
    outcome = next((c for c in ("outcome", "status", "result") if c in columns), None)
    if outcome is None:
        return []
    from sqlalchemy import column, table

    deliveries = table(WEBHOOK_DELIVERIES_TABLE, column(outcome))
    rows = session.execute(
        select(deliveries.c[outcome], func.count()).group_by(deliveries.c[outcome])
    ).tuples()
    return [
        _gauge(
            "cancelflow_webhook_deliveries",
            "Webhook deliveries by status (pending, failed, delivered, dead).",
            ["outcome"],
            iter([(value if value is not None else "unknown", n) for value, n in rows]),
        )
    ]


class DatabaseCollector(Collector):
    """A custom collector: each scrape opens one session from `session_factory` and reads the gauges."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self._session_factory = session_factory

    def collect(self) -> Iterator[Metric]:
        session = self._session_factory()
        try:
            metrics = collect_from(session)
        finally:
            session.rollback()  # read-only: nothing to keep
            session.close()
        yield from metrics

    def describe(self) -> Iterator[Metric]:
        # Registering must not query the database; describing nothing defers everything to scrape time.
        return iter(())
