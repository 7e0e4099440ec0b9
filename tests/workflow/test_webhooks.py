"""Outbound webhooks through the real worker, beat and API, to a real HTTP receiver on 127.0.0.1.

The receiver is what a storefront would run: it dedupes by `X-Cancelflow-Event-Id`, checks signatures,
and here it misbehaves on purpose: one endpoint fails the first two tries of every event with 500, the
other answers 410 Gone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cancelflow.cli.main import app as cli_app
from cancelflow.integrations.webhooks import verify_signature
from cancelflow.models import WebhookAttempt, WebhookDelivery
from tests.factories import load, next_id, token_key
from tests.harness import Stack, wait_for
from tests.workflow.conftest import make_order, make_service, submit, wait_status

pytestmark = pytest.mark.worker

FLAKY_FAILURES = 2


@dataclass
class Received:
    path: str
    event_id: str
    event_type: str
    signature: str
    body: bytes
    answered: int


@dataclass
class Receiver:
    """Thread-safe log of every request, and the per-event try counts the flaky endpoint answers by."""

    log: list[Received] = field(default_factory=list)
    # Per endpoint and event: one event sent to two subscriptions carries the same id.
    tries: dict[tuple[str, str], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, headers: Any, body: bytes) -> int:
        event_id = headers.get("X-Cancelflow-Event-Id", "")
        with self.lock:
            key = (path, event_id)
            self.tries[key] = self.tries.get(key, 0) + 1
            if path == "/gone":
                code = 410
            elif path == "/flaky":
                code = 500 if self.tries[key] <= FLAKY_FAILURES else 200
            else:
                code = 404
            self.log.append(
                Received(
                    path=path,
                    event_id=event_id,
                    event_type=headers.get("X-Cancelflow-Event-Type", ""),
                    signature=headers.get("X-Cancelflow-Signature", ""),
                    body=body,
                    answered=code,
                )
            )
        return code

    def accepted(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.log if r.path == path and r.answered == 200]

    def all(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.log if r.path == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            code = state.answer(self.path, self.headers, body)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the Receiver keeps its own log

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def staff_key(database: str) -> str:
    return token_key("staff")


def _deliveries(subscription_id: int, request_id: int) -> list[WebhookDelivery]:
    from cancelflow.db import transaction

    with transaction() as session:
        return list(
            session.scalars(
                select(WebhookDelivery)
                .where(
                    WebhookDelivery.subscription_id == subscription_id,
                    WebhookDelivery.request_id == request_id,
                )
                .order_by(WebhookDelivery.id)
            )
        )


def _attempts(delivery_id: int) -> list[WebhookAttempt]:
    from cancelflow.db import transaction

    with transaction() as session:
        return list(
            session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == delivery_id)
                .order_by(WebhookAttempt.id)
            )
        )


def _settled(subscription_id: int, request_id: int) -> list[WebhookDelivery] | None:
    rows = _deliveries(subscription_id, request_id)
    return rows if rows and all(d.status.value in ("delivered", "dead") for d in rows) else None


class TestDelivery:
    def test_retried_ordered_signed_deliveries_and_manual_redelivery(
        self, stack: Stack, receiver: tuple[Receiver, str], staff_key: str
    ) -> None:
        state, base_url = receiver
        runner = CliRunner()
        # Given a channel of its own (no other test's request reaches these subscriptions)
        channel = next_id()
        load({"channels": [{"id": channel, "name": f"Webhooks {channel}"}]})
        # And a flaky endpoint subscribed to everything, through the API (the secret comes back once)
        api = httpx.Client(
            base_url=stack.api_url, headers={"Authorization": f"Token {staff_key}"}, timeout=10
        )
        created = api.post(
            "/api/v1/webhooks/", json={"url": f"{base_url}/flaky", "events": ["*"], "channel": channel}
        )
        assert created.status_code == 201, created.text
        flaky_id, flaky_secret = created.json()["id"], created.json()["secret"]
        assert "secret" not in api.get("/api/v1/webhooks/").json()["results"][0]
        # And a gone endpoint subscribed to completions, through the CLI
        added = runner.invoke(
            cli_app,
            [
                "webhooks",
                "add",
                f"{base_url}/gone",
                "--events",
                "request.completed",
                "--channel",
                str(channel),
            ],
        )
        assert added.exit_code == 0, added.output
        fields = dict(line.split(" ", 1) for line in added.output.splitlines() if " " in line)
        gone_id, gone_secret = int(fields["subscription"]), fields["secret"].strip()
        try:
            # When a storefront's request runs to completion with a service that accepts
            service = make_service(stack, policy="accept")
            order = make_order(service, channel=channel)
            request = wait_status(submit(order_item=order["items"][0]["id"]), "completed")

            # Then every event reaches the flaky endpoint after two failures, once, in order
            flaky = wait_for(
                lambda: _settled(flaky_id, request.id), timeout=90, what="flaky deliveries settled"
            )
            types = [d.event_type for d in flaky]
            assert types.index("request.approved") < types.index("request.completed")
            assert {"plan.completed", "request.completed"} <= set(types)
            assert all(d.status.value == "delivered" for d in flaky)
            for delivery in flaky:
                attempts = _attempts(delivery.id)
                assert [a.status_code for a in attempts] == [500, 500, 200]
                assert [a.outcome.value for a in attempts] == ["retry", "retry", "delivered"]
                assert all(a.duration_ms >= 0 for a in attempts)
            accepted = state.accepted("/flaky")
            assert [r.event_id for r in accepted] == [str(d.event_id) for d in flaky]  # once each, in order
            assert [r.event_type for r in accepted] == types
            for received in state.all("/flaky"):
                assert verify_signature(flaky_secret, received.signature, received.body)

            # And the gone endpoint's delivery is dead after one attempt
            [gone] = wait_for(lambda: _settled(gone_id, request.id), timeout=60, what="gone delivery settled")
            assert (gone.event_type, gone.status.value, gone.attempt, gone.last_status_code) == (
                "request.completed",
                "dead",
                1,
                410,
            )
            [attempt] = _attempts(gone.id)
            assert (attempt.status_code, attempt.outcome.value) == (410, "dead")
            [received_gone] = state.all("/gone")
            assert verify_signature(gone_secret, received_gone.signature, received_gone.body)
            dead = runner.invoke(
                cli_app, ["webhooks", "deliveries", "--status", "dead", "--subscription", str(gone_id)]
            )
            assert dead.exit_code == 0, dead.output
            assert str(gone.event_id) in dead.output
            assert f"{base_url}/flaky" in runner.invoke(cli_app, ["webhooks", "list"]).output
            listed = api.get(
                "/api/v1/webhooks/deliveries/", params={"status": "dead", "subscription": gone_id}
            )
            assert [d["id"] for d in listed.json()["results"]] == [gone.id]

            # When an operator redelivers both by hand (CLI and API)
            again = runner.invoke(cli_app, ["webhooks", "redeliver", str(gone.id)])
            assert again.exit_code == 0, again.output
            completed = flaky[types.index("request.completed")]
            answer = api.post(f"/api/v1/webhooks/deliveries/{completed.id}/redeliver/")
            assert answer.status_code == 202, answer.text
            assert answer.json()["event_id"] == str(completed.event_id)

            # Then each gets one new attempt with the same event id, which the receiver can drop
            wait_for(lambda: len(_attempts(gone.id)) == 2, timeout=60, what="second attempt of the gone one")
            wait_for(lambda: len(_attempts(completed.id)) == 4, timeout=60, what="redelivered completion")
            assert [a.status_code for a in _attempts(gone.id)] == [410, 410]
            assert [r.event_id for r in state.all("/gone")] == [str(gone.event_id)] * 2
            repeated = [r for r in state.accepted("/flaky") if r.event_id == str(completed.event_id)]
            assert len(repeated) == 2
            assert len({r.event_id for r in state.accepted("/flaky")}) == len(flaky)  # deduped: nothing new
            detail = api.get(f"/api/v1/webhooks/deliveries/{completed.id}/").json()
            assert detail["status"] == "delivered"
            assert [a["status_code"] for a in detail["attempts"]] == [500, 500, 200, 200]
            shown = runner.invoke(cli_app, ["webhooks", "attempts", str(gone.id)])
            assert shown.exit_code == 0
            assert [line.count("dead") for line in shown.output.splitlines() if "410" in line] == [1, 1]
        finally:
            assert api.delete(f"/api/v1/webhooks/{flaky_id}/").status_code == 204
            removed = runner.invoke(cli_app, ["webhooks", "remove", str(gone_id)])
            assert removed.exit_code == 0, removed.output
            api.close()

    def test_bad_subscription_is_a_400_and_needs_staff(self, stack: Stack, staff_key: str) -> None:
        bad = httpx.post(
            f"{stack.api_url}/api/v1/webhooks/",
            json={"url": "http://127.0.0.1:9/x", "events": ["request.exploded"]},
            headers={"Authorization": f"Token {staff_key}"},
        )
        assert bad.status_code == 400, bad.text
        assert "events" in bad.json()
        anonymous = httpx.get(f"{stack.api_url}/api/v1/webhooks/")
        assert anonymous.status_code == 401
