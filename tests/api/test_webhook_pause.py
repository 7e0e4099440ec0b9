"""Staff see a paused webhook subscription and resume it, over the API and the CLI."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import update
from typer.testing import CliRunner

from cancelflow.cli.main import app as cli_app
from cancelflow.db import transaction
from cancelflow.models import WebhookSubscription
from cancelflow.services.clock import now

BASE = "/api/v1/webhooks/"


def _paused_subscription(client: TestClient, staff: dict[str, str]) -> int:
    created = client.post(BASE, headers=staff, json={"url": "http://127.0.0.1:9/hook", "events": ["*"]})
    assert created.status_code == 201, created.text
    subscription_id = int(created.json()["id"])
    with transaction() as session:  # as the delivery service leaves it after too many failures in a row
        session.execute(
            update(WebhookSubscription)
            .where(WebhookSubscription.id == subscription_id)
            .values(consecutive_failures=20, paused_at=now(), pause_reason="20 failed attempts in a row")
        )
    return subscription_id


def _listed(client: TestClient, staff: dict[str, str], subscription_id: int) -> dict[str, object]:
    listing = client.get(BASE, headers=staff)
    assert listing.status_code == 200
    return next(s for s in listing.json()["results"] if s["id"] == subscription_id)


def test_the_api_shows_a_paused_subscription_and_resumes_it(
    client: TestClient, staff: dict[str, str]
) -> None:
    subscription_id = _paused_subscription(client, staff)
    listed = _listed(client, staff, subscription_id)
    assert listed["status"] == "paused"
    assert listed["consecutive_failures"] == 20
    assert listed["paused_at"] is not None
    assert listed["pause_reason"] == "20 failed attempts in a row"

    resumed = client.post(f"{BASE}{subscription_id}/resume/", headers=staff)
    assert resumed.status_code == 200, resumed.text
    assert (resumed.json()["status"], resumed.json()["consecutive_failures"]) == ("active", 0)
    assert _listed(client, staff, subscription_id)["status"] == "active"
    # Resuming one that is not paused changes nothing; an unknown one is a 404.
    assert client.post(f"{BASE}{subscription_id}/resume/", headers=staff).json()["status"] == "active"
    assert client.post(f"{BASE}{2**62}/resume/", headers=staff).status_code == 404
    assert client.post(f"{BASE}{subscription_id}/resume/").status_code == 401


def test_the_cli_lists_a_paused_subscription_and_resumes_it(
    client: TestClient, staff: dict[str, str]
) -> None:
    subscription_id = _paused_subscription(client, staff)
    runner = CliRunner()
    listing = runner.invoke(cli_app, ["webhooks", "list"])
    assert listing.exit_code == 0, listing.output
    assert f"subscription {subscription_id} paused: 20 failed attempts in a row" in listing.output
    resumed = runner.invoke(cli_app, ["webhooks", "resume", str(subscription_id)])
    assert resumed.exit_code == 0, resumed.output
    assert f"subscription {subscription_id}: resumed" in resumed.output
    assert _listed(client, staff, subscription_id)["status"] == "active"
    assert runner.invoke(cli_app, ["webhooks", "resume", str(2**62)]).exit_code == 1
