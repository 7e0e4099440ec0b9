"""Every metric family `/metrics` serves is there from the first scrape of an empty database, with all its
label values, and a `_total` name is a counter."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from cancelflow.db import migrate, normalise_url
from cancelflow.models.enums import PlanStatus, RefundTarget, RequestStatus, StepKind, StepStatus
from cancelflow.models.webhooks import DeliveryStatus
from cancelflow.services import approval, metrics
from tests import conftest
from tests.factories import new_order, new_request

FAMILIES = {
    "cancelflow_requests": ("gauge", {"status"}),
    "cancelflow_plans": ("gauge", {"status"}),
    "cancelflow_steps": ("gauge", {"status", "kind"}),
    "cancelflow_oldest_confirmation_waiting_seconds": ("gauge", set()),
    "cancelflow_money_moved": ("counter", {"target", "currency"}),
    "cancelflow_webhook_deliveries": ("gauge", {"outcome"}),
    "cancelflow_webhook_subscriptions": ("gauge", {"status"}),
}


def scrape(session: Session) -> dict[str, tuple[str, list[dict[str, str]]]]:
    """What a Prometheus scrape reads: family name -> (type, the label sets of its samples)."""
    registry = CollectorRegistry()
    registry.register(metrics.DatabaseCollector(lambda: session))
    text = generate_latest(registry).decode()
    return {
        family.name: (family.type, [dict(s.labels) for s in family.samples])
        for family in text_string_to_metric_families(text)
    }


@pytest.fixture
def empty_database(database: str) -> Iterator[str]:
    name = f"cf_metrics_{uuid.uuid4().hex[:8]}"
    conftest._admin_execute(f'CREATE DATABASE "{name}"')
    base, _, query = database.partition("?")
    url = base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")
    try:
        migrate(url)
        yield url
    finally:
        conftest._admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_every_family_with_its_labels_on_an_empty_database(empty_database: str) -> None:
    engine = create_engine(normalise_url(empty_database), poolclass=NullPool)
    try:
        with Session(engine) as session:
            found = scrape(session)
    finally:
        engine.dispose()
    assert {name: kind for name, (kind, _) in found.items()} == {n: k for n, (k, _) in FAMILIES.items()}
    labels = {name: samples for name, (_, samples) in found.items()}
    assert sorted(s["status"] for s in labels["cancelflow_requests"]) == sorted(RequestStatus)
    assert sorted(s["status"] for s in labels["cancelflow_plans"]) == sorted(PlanStatus)
    assert len(labels["cancelflow_steps"]) == len(StepStatus) * len(StepKind)
    assert sorted(s["outcome"] for s in labels["cancelflow_webhook_deliveries"]) == sorted(DeliveryStatus)
    assert labels["cancelflow_oldest_confirmation_waiting_seconds"] == [{}]


def test_money_moved_shows_every_target_at_zero_once_a_plan_has_a_currency(session: Session) -> None:
    # Given a plan in a currency no money has moved in yet
    request = new_request(new_order(session=session, currency="xts"), session=session)
    approval.approve(session, request, actor="t")
    session.flush()

    # Then the counter has a zero series for each refund target in that currency
    kind, samples = scrape(session)["cancelflow_money_moved"]
    assert kind == "counter"
    assert sorted(s["target"] for s in samples if s["currency"] == "XTS") == sorted(RefundTarget)


def test_money_moved_shows_every_target_at_zero_for_the_currency_of_an_order(session: Session) -> None:
    # Given orders in a currency no request has been made for yet (a stack before its first request)
    new_order(session=session, currency="xba")
    session.flush()

    # Then the counter already has a zero series for each refund target in that currency
    kind, samples = scrape(session)["cancelflow_money_moved"]
    assert kind == "counter"
    assert sorted(s["target"] for s in samples if s["currency"] == "XBA") == sorted(RefundTarget)
