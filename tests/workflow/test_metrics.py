"""Prometheus: the API's gauges read from PostgreSQL, the worker's task-latency histograms."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from tests.harness import Stack, clean_workdir, free_port, running, wait_for
from tests.workflow.conftest import (
    make_order,
    make_service,
    money_rows,
    plan_for,
    submit,
    wait_plan,
    wait_status,
)

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, database: str) -> Iterator[Stack]:
    """The usual stack, its worker also serving its histograms (multiprocess mode, prefork children)."""
    port = free_port()
    stack = Stack(
        clean_workdir("stack-test_metrics"), env_overrides={"CANCELFLOW_WORKER_METRICS_PORT": str(port)}
    )
    stack.worker_metrics_url = f"http://127.0.0.1:{port}/metrics"  # type: ignore[attr-defined]
    with running(stack):
        yield stack


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in found, f"{name}{labels} not exposed; have {sorted(n for n, _ in found if n == name)}"
    return found[key]


def test_gauges_and_task_histograms_after_a_flow(stack: Stack) -> None:
    # Given one request completed with a card refund and one plan left waiting for a silent service
    service = make_service(stack, policy="accept")
    order = make_order(service, quantity=2, unit_price="12.50")
    done = wait_status(submit(order_item=order["items"][0]["id"], quantity=2), "completed")
    [money] = money_rows(plan_for(done.id).id)
    silent = make_service(stack, policy="never")
    waiting_order = make_order(silent)
    waiting = wait_status(submit(order_item=waiting_order["items"][0]["id"]), "approved")
    wait_plan(waiting.id, "confirmation_waiting")

    # When Prometheus scrapes the API
    api = samples(f"{stack.api_url}/metrics")

    # Then the gauges are what the database holds
    from cancelflow.db import transaction
    from cancelflow.models import CancellationRequest, MoneyTransaction

    with transaction() as session:
        completed = session.scalar(select(func.count()).where(CancellationRequest.status == "completed"))
        moved = session.scalar(
            select(func.sum(MoneyTransaction.amount)).where(
                MoneyTransaction.target == "original_payment",
                func.upper(MoneyTransaction.currency) == money.currency.upper(),
            )
        )
    assert value(api, "cancelflow_requests", status="completed") == completed >= 1
    assert value(api, "cancelflow_plans", status="confirmation_waiting") >= 1
    assert value(api, "cancelflow_steps", status="done", kind="refund") >= 1
    assert value(api, "cancelflow_steps", status="dead", kind="bank_transfer") >= 0  # zero series exist
    assert value(api, "cancelflow_oldest_confirmation_waiting_seconds") >= 0
    assert money.amount == Decimal("25.00")
    assert (
        Decimal(
            str(
                value(
                    api,
                    "cancelflow_money_moved_total",
                    target="original_payment",
                    currency=money.currency.upper(),
                )
            )
        )
        == moved
    )

    # And the worker's main process serves the latency histograms its pool children observed
    url = stack.worker_metrics_url  # type: ignore[attr-defined]

    def counted() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        found = samples(url)
        names = ("cancellations.submit", "payments.refund")
        ok = all(
            found.get(("cancelflow_task_duration_seconds_count", frozenset({("task", t)})), 0) >= 1
            for t in names
        )
        # Every step is observed, whether it ran from its own message or in-process after the one before
        # (the close step runs in the refund's task, so it has no task of its own here)
        steps = (
            ("payments.refund", "false"),
            ("cancellations.close", "true"),
            ("cancellations.validate", "true"),
        )
        ok = ok and all(
            found.get(("cancelflow_step_duration_seconds_count", frozenset({("task", t), ("chained", c)})), 0)
            >= 1
            for t, c in steps
        )
        return found if ok else None

    worker = wait_for(counted, timeout=20, what="task histograms on the worker's metrics port")
    # A task that did not run in this flow has its series too (every registered task, from the start)
    for never_ran in ("payments.bank_transfer", "exports.run"):
        assert value(worker, "cancelflow_task_duration_seconds_count", task=never_ran) >= 0
    # So do the counters of refused messages, before any refusal
    from cancelflow.worker.intake_guard import REFUSAL_REASONS

    for reason in REFUSAL_REASONS:
        assert value(worker, "cancelflow_intake_refused_total", reason=reason) >= 0
    assert value(worker, "cancelflow_forged_tasks_total", task="payments.refund", reason="unknown_id") >= 0
    submit_count = value(worker, "cancelflow_task_duration_seconds_count", task="cancellations.submit")
    assert submit_count >= 2
    inf_bucket = value(
        worker, "cancelflow_task_duration_seconds_bucket", task="cancellations.submit", le="+Inf"
    )
    assert inf_bucket == submit_count
