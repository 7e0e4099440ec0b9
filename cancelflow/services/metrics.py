"""Prometheus gauges computed from PostgreSQL at scrape time.

The database is the source of truth, so the numbers are read from it on every scrape rather than
counted in a process: any API replica answers the same, and a restart loses nothing. No query reads the
history: the counts and sums are the tally rows (`services.tallies`, kept by triggers in the transaction of
each change), the oldest waiting plan is a partial index on the live status; the whole scrape is one short
read-only transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from enum import Enum

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cancelflow.models import (
    DeliveryStatus,
    WebhookSubscription,
)
from cancelflow.models.enums import PlanStatus, RefundTarget, RequestStatus, StepKind, StepStatus
from cancelflow.services import overview, tallies
from cancelflow.services.clock import now


def _gauge(
    name: str, documentation: str, labels: list[str], rows: Iterator[tuple[object, ...]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for *values, number in rows:
        family.add_metric([str(v) for v in values], float(number))  # type: ignore[arg-type]
    return family


def _by_status(
    session: Session, tally: str, statuses: type[Enum], name: str, documentation: str, label: str
) -> GaugeMetricFamily:
    """The tally's rows counted by status, one series for each of `statuses` (0 for a status with none)."""
    counts = overview.counts_of(session, tally, statuses)
    return _gauge(name, documentation, [label], iter([(s.value, n) for s, n in counts.items()]))


def collect_from(session: Session) -> list[Metric]:
    """Every family, read in `session`, each with all its label values from the start: a status with no
    rows is reported as 0, so no series appears late or vanishes."""
    metrics: list[Metric] = []

    statuses: tuple[tuple[str, type[Enum], str, str], ...] = (
        ("requests", RequestStatus, "cancelflow_requests", "Cancellation requests by status."),
        ("plans", PlanStatus, "cancelflow_plans", "Cancellation plans by status."),
    )
    for tally, values, name, documentation in statuses:
        metrics.append(_by_status(session, tally, values, name, documentation, "status"))

    steps = {(status, kind): n for (status, kind), (n, _) in tallies.sums(session, "steps").items()}
    metrics.append(
        _gauge(
            "cancelflow_steps",
            "Workflow steps by status and kind.",
            ["status", "kind"],
            iter(
                [(s.value, k.value, steps.get((s.value, k.value), 0)) for s in StepStatus for k in StepKind]
            ),
        )
    )

    oldest = overview.oldest_confirmation_waiting(session)
    age = GaugeMetricFamily(
        "cancelflow_oldest_confirmation_waiting_seconds",
        "Age in seconds of the oldest plan waiting for its fulfillment service's answer (0 when none).",
    )
    age.add_metric([], max(0.0, (now() - oldest.since).total_seconds()) if oldest is not None else 0.0)
    metrics.append(age)

    # Money only ever moves out, so this is a counter (a `_total` name promises one). Each target is shown
    # for every currency an order or a plan has, at 0 until money moves, so the series exist before the
    # first request (the currencies are the second key of the order and plan tallies).
    moved = overview.money_moved(session)
    currencies = {code for code, _ in tallies.sums(session, "orders")}
    currencies |= {code for _, code in tallies.sums(session, "plans")}
    currencies |= {code for _, code in moved}
    money = CounterMetricFamily(
        "cancelflow_money_moved",
        "Sum of the money moved back to customers, by refund target and currency.",
        labels=["target", "currency"],
    )
    for target in RefundTarget:
        for code in sorted(currencies):
            money.add_metric([target.value, code], float(moved.get((target, code)) or 0))
    metrics.append(money)

    metrics.append(
        _by_status(
            session,
            "deliveries",
            DeliveryStatus,
            "cancelflow_webhook_deliveries",
            "Webhook deliveries by status (pending, failed, delivered, dead).",
            "outcome",
        )
    )
    # A paused subscription means its receiver hears nothing until staff resume it.
    paused = WebhookSubscription.paused_at.is_not(None)
    subscriptions: dict[bool, int] = dict(
        session.execute(
            select(paused, func.count()).where(WebhookSubscription.is_active).group_by(paused)
        ).all()
    )
    metrics.append(
        _gauge(
            "cancelflow_webhook_subscriptions",
            "Active webhook subscriptions by status (paused: too many failed attempts in a row).",
            ["status"],
            iter([("active", subscriptions.get(False, 0)), ("paused", subscriptions.get(True, 0))]),
        )
    )
    return metrics


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
