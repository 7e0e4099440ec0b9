"""The sandbox fulfillment service: signed notifications, then pull and answer through the shop's API.

The shop's API (cancelflow's side) is a fake behind ``httpx.MockTransport`` that records every request,
so the tests assert what the sandbox really sent: which fulfillment orders, which endpoint, which token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Header

from cancelflow.sandbox.fulfillment import FulfillmentSandbox, create_app, sign
from tests.harness import free_port

from . import serve

API = "http://shop.test"
VERSION = "2021-07"
PREFIX = f"/admin/api/{VERSION}"
CANCEL = b'{"kind":"CANCELLATION_REQUEST"}'


@dataclass
class Call:
    method: str
    path: str
    token: str | None
    params: dict[str, str]
    body: Any


@dataclass
class FakeShop:
    """Just enough of cancelflow's fulfillment-order API: list assigned orders, accept or reject.

    Answered orders leave the list, as they do in cancelflow. ``script`` pops a forced status code per
    (method, path) to simulate outages and conflicts.
    """

    orders: dict[str, list[int]] = field(default_factory=dict)  # token -> fulfillment order ids
    script: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    # keep_listed: answered orders stay in the list (a pull that started before the answer landed);
    # sent_at: the `sent_at` of each order's newest cancellation request, listed in merchant_requests.
    keep_listed: bool = False
    sent_at: dict[int, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    pull_seconds: float = 0.0  # how long a pull takes (outside the lock)

    def handler(self, request: httpx.Request) -> httpx.Response:
        token = request.headers.get("X-Shopify-Access-Token")
        body = json.loads(request.content) if request.content else None
        if request.method == "GET" and self.pull_seconds:
            time.sleep(self.pull_seconds)
        with self.lock:
            self.calls.append(Call(request.method, request.url.path, token, dict(request.url.params), body))
            forced = self.script.get((request.method, request.url.path))
            if forced:
                code = forced.pop(0)
                headers = {"Retry-After": "0.05"} if code == 429 else {}
                return httpx.Response(code, json={"errors": "scripted"}, headers=headers)
            if token not in self.orders:
                return httpx.Response(401, json={"errors": "bad token"})
            path = request.url.path
            if request.method == "GET" and path == f"{PREFIX}/assigned_fulfillment_orders.json":
                listed = [
                    {
                        "id": i,
                        "request_status": "cancellation_requested",
                        "merchant_requests": [{"kind": "cancellation_request", "sent_at": self.sent_at[i]}]
                        if i in self.sent_at
                        else [],
                    }
                    for i in sorted(self.orders[token])
                    if i > int(request.url.params.get("since_id", 0))
                ][: int(request.url.params.get("limit", 50))]
                return httpx.Response(200, json={"fulfillment_orders": listed})
            if request.method == "POST" and path.startswith(f"{PREFIX}/fulfillment_orders/"):
                fo_id = int(path.split("/")[-3])
                if fo_id not in self.orders[token]:
                    return httpx.Response(422, json={"errors": "already answered"})
                if not self.keep_listed:
                    self.orders[token].remove(fo_id)
                return httpx.Response(200, json={"fulfillment_order": {"id": fo_id}})
            return httpx.Response(404)

    def answers(self) -> list[tuple[int, str, str | None, str]]:
        """(fulfillment order id, accept|reject, token, message) of every answer POSTed."""
        with self.lock:
            return [
                (int(c.path.split("/")[-3]), c.path.rsplit("/", 1)[-1].removesuffix(".json"), c.token,
                 c.body["cancellation_request"]["message"])
                for c in self.calls
                if c.method == "POST"
            ]  # fmt: skip

    def pulls(self) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == "GET"]


class Sandbox:
    """A running sandbox with its config file, fake shop and HTTP client."""

    def __init__(self, config_path: Path, shop: FakeShop, url: str, service: FulfillmentSandbox) -> None:
        self.config_path = config_path
        self.shop = shop
        self.url = url
        self.service = service
        self.http = httpx.Client(base_url=url, timeout=10)

    def configure(self, **services: dict[str, Any]) -> None:
        config = {"api_base_url": API, "api_version": VERSION, "services": services}
        self.config_path.write_text(json.dumps(config), encoding="utf-8")

    def notify(
        self, handle: str, body: bytes = CANCEL, *, secret: str | None = None, signature: str | None = None
    ) -> httpx.Response:
        if signature is None:
            signature = sign(secret if secret is not None else f"secret-{handle}", body)
        return self.http.post(
            f"/{handle}/fulfillment_order_notification",
            content=body,
            headers={"X-Shopify-Hmac-Sha256": signature, "Content-Type": "application/json"},
        )

    def settle(self) -> None:
        assert self.service.wait_idle(timeout=10), "background work did not finish"

    def log(self) -> list[dict[str, Any]]:
        return list(self.http.get("/_admin/log").json())


def service(handle: str, policy: str = "accept", **extra: Any) -> dict[str, Any]:
    return {"token": f"token-{handle}", "secret": f"secret-{handle}", "policy": policy, **extra}


@pytest.fixture
def shop() -> FakeShop:
    return FakeShop()


@pytest.fixture
def sandbox(tmp_path: Path, shop: FakeShop) -> Iterator[Sandbox]:
    config_path = tmp_path / "fulfillment.json"
    config_path.write_text(json.dumps({"api_base_url": API, "api_version": VERSION, "services": {}}))
    app = create_app(config_path, transport=httpx.MockTransport(shop.handler), retry_backoff=0.01)
    with serve(app) as url:
        box = Sandbox(config_path, shop, url, app.state.sandbox)
        try:
            yield box
        finally:
            box.http.close()


def test_sign_is_base64_hmac_sha256_of_the_raw_body() -> None:
    # Independent reference value:
    #   printf '{"kind":"CANCELLATION_REQUEST"}' | openssl dgst -sha256 -hmac s3cret -binary | base64
    assert sign("s3cret", CANCEL) == "fixQm3tCe2KiyUXAn/83DNbY5VAHhAonO6mstIX3Omc="


def test_unknown_handle_is_404(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1"))
    assert sandbox.notify("nope").status_code == 404
    assert sandbox.shop.calls == []


@pytest.mark.parametrize(
    "signature",
    [
        "",  # missing
        "not-base64",
        sign("another-secret", CANCEL),
        sign("secret-wh1", b'{"kind": "CANCELLATION_REQUEST"}'),  # same meaning, different bytes
    ],
)
def test_bad_or_missing_signature_is_401(sandbox: Sandbox, signature: str) -> None:
    sandbox.configure(wh1=service("wh1"))
    if signature:
        response = sandbox.notify("wh1", signature=signature)
    else:
        response = sandbox.http.post("/wh1/fulfillment_order_notification", content=CANCEL)
    assert response.status_code == 401
    sandbox.settle()
    assert sandbox.shop.calls == []
    assert sandbox.http.get("/_admin/notifications").json() == {
        "wh1": {"valid": 0, "failed_on_purpose": 0, "bad_signature": 1}
    }


def test_body_must_name_a_known_kind(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1"))
    assert sandbox.notify("wh1", b"[]").status_code == 400
    assert sandbox.notify("wh1", b'{"kind": "SOMETHING_ELSE"}').status_code == 400


def test_accept_pulls_with_the_token_then_accepts_every_order(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1"), wh2=service("wh2"))
    sandbox.shop.orders = {"token-wh1": [11, 12], "token-wh2": [21]}

    response = sandbox.notify("wh1")
    assert (response.status_code, response.json()) == (200, {"ok": True})
    sandbox.settle()

    (pull,) = sandbox.shop.pulls()
    assert pull.path == f"{PREFIX}/assigned_fulfillment_orders.json"
    assert pull.params == {"assignment_status": "cancellation_requested", "limit": "250"}
    assert pull.token == "token-wh1"
    assert sandbox.shop.answers() == [
        (11, "accept", "token-wh1", "Accepted by sandbox"),
        (12, "accept", "token-wh1", "Accepted by sandbox"),
    ]
    assert sandbox.shop.orders["token-wh2"] == [21]  # another service's orders are untouched
    log = sandbox.log()
    assert [(e["handle"], e["fulfillment_order_id"], e["action"], e["status_code"]) for e in log] == [
        ("wh1", 11, "accepted", 200),
        ("wh1", 12, "accepted", 200),
    ]
    assert all(e["at"] for e in log)
    assert sandbox.http.get("/_admin/notifications").json() == {
        "wh1": {"valid": 1, "failed_on_purpose": 0, "bad_signature": 0}
    }


def test_reject_answers_with_the_configured_message(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1", "reject", message="Already shipped"))
    sandbox.shop.orders = {"token-wh1": [7]}

    assert sandbox.notify("wh1").status_code == 200
    sandbox.settle()

    assert sandbox.shop.answers() == [(7, "reject", "token-wh1", "Already shipped")]
    assert [(e["fulfillment_order_id"], e["action"]) for e in sandbox.log()] == [(7, "rejected")]


def test_never_pulls_but_does_not_answer(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1", "never"))
    sandbox.shop.orders = {"token-wh1": [7, 8]}

    assert sandbox.notify("wh1").status_code == 200
    sandbox.settle()

    assert len(sandbox.shop.pulls()) == 1
    assert sandbox.shop.answers() == []
    assert [(e["fulfillment_order_id"], e["action"], e["status_code"]) for e in sandbox.log()] == [
        (7, "ignored", None),
        (8, "ignored", None),
    ]


def test_accept_after_answers_the_notification_at_once_and_accepts_later(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1", "accept_after", delay_seconds=0.5))
    sandbox.shop.orders = {"token-wh1": [7]}

    started = time.monotonic()
    assert sandbox.notify("wh1").status_code == 200
    assert time.monotonic() - started < 0.4
    _wait_for(lambda: len(sandbox.shop.pulls()) == 1)
    assert sandbox.shop.answers() == []

    sandbox.settle()
    assert time.monotonic() - started >= 0.5
    assert sandbox.shop.answers() == [(7, "accept", "token-wh1", "Accepted by sandbox")]


def test_overlapping_notifications_answer_each_order_once(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1", "accept_after", delay_seconds=0.3))
    sandbox.shop.orders = {"token-wh1": [7]}

    assert sandbox.notify("wh1").status_code == 200
    _wait_for(lambda: len(sandbox.shop.pulls()) == 1)
    assert sandbox.notify("wh1").status_code == 200  # pulls order 7 again while its accept is pending
    sandbox.settle()

    assert len(sandbox.shop.pulls()) == 2
    assert sandbox.shop.answers() == [(7, "accept", "token-wh1", "Accepted by sandbox")]


def test_a_cancellation_request_is_answered_once_and_a_new_one_again(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1"))
    sandbox.shop.keep_listed = True  # every pull still lists order 7, as a pull racing the answer would
    sandbox.shop.orders = {"token-wh1": [7]}
    sandbox.shop.sent_at = {7: "2026-11-29T10:00:00Z"}

    for _ in range(3):
        assert sandbox.notify("wh1").status_code == 200
        sandbox.settle()
    assert len(sandbox.shop.pulls()) == 3
    assert sandbox.shop.answers() == [(7, "accept", "token-wh1", "Accepted by sandbox")]

    sandbox.shop.sent_at[7] = "2026-11-29T11:00:00Z"  # asked again: a new cancellation request
    assert sandbox.notify("wh1").status_code == 200
    sandbox.settle()
    assert [a[0] for a in sandbox.shop.answers()] == [7, 7]


def test_fail_first_answers_500_then_behaves_like_accept(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1", "fail_first", fail_first=2))
    sandbox.shop.orders = {"token-wh1": [7]}

    assert [sandbox.notify("wh1").status_code for _ in range(3)] == [500, 500, 200]
    sandbox.settle()

    assert len(sandbox.shop.pulls()) == 1  # failed notifications do no work
    assert sandbox.shop.answers() == [(7, "accept", "token-wh1", "Accepted by sandbox")]
    assert sandbox.http.get("/_admin/notifications").json() == {
        "wh1": {"valid": 1, "failed_on_purpose": 2, "bad_signature": 0}
    }


def test_config_is_reread_on_every_notification(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1"))
    assert sandbox.notify("wh2").status_code == 404

    sandbox.configure(wh1=service("wh1"), wh2=service("wh2", "reject"))
    sandbox.shop.orders = {"token-wh2": [9]}
    assert sandbox.notify("wh2").status_code == 200
    sandbox.settle()
    assert sandbox.shop.answers() == [(9, "reject", "token-wh2", "Rejected by sandbox")]


def test_pull_and_answer_are_retried_on_5xx(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1"))
    sandbox.shop.orders = {"token-wh1": [7]}
    sandbox.shop.script = {
        ("GET", f"{PREFIX}/assigned_fulfillment_orders.json"): [503, 502],
        ("POST", f"{PREFIX}/fulfillment_orders/7/cancellation_request/accept.json"): [500],
    }

    assert sandbox.notify("wh1").status_code == 200
    sandbox.settle()

    assert len(sandbox.shop.pulls()) == 3
    assert [a[:2] for a in sandbox.shop.answers()] == [(7, "accept"), (7, "accept")]
    assert [(e["fulfillment_order_id"], e["action"], e["status_code"]) for e in sandbox.log()] == [
        (7, "accepted", 200)
    ]


def test_gives_up_after_three_retries(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1"))
    sandbox.shop.orders = {"token-wh1": [7]}
    sandbox.shop.script = {("GET", f"{PREFIX}/assigned_fulfillment_orders.json"): [503] * 10}

    assert sandbox.notify("wh1").status_code == 200
    sandbox.settle()

    assert len(sandbox.shop.pulls()) == 4  # the first attempt and three retries
    assert sandbox.shop.answers() == []
    assert [(e["fulfillment_order_id"], e["action"], e["status_code"]) for e in sandbox.log()] == [
        (None, "failed", 503)
    ]


def test_a_422_answer_is_logged_and_not_retried(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1"))
    sandbox.shop.orders = {"token-wh1": [7]}
    sandbox.shop.script = {("POST", f"{PREFIX}/fulfillment_orders/7/cancellation_request/accept.json"): [422]}

    assert sandbox.notify("wh1").status_code == 200
    sandbox.settle()

    assert len(sandbox.shop.answers()) == 1
    assert [(e["fulfillment_order_id"], e["action"], e["status_code"]) for e in sandbox.log()] == [
        (7, "failed", 422)
    ]


def test_connection_errors_are_retried_then_logged(tmp_path: Path) -> None:
    attempts: list[str] = []

    def unreachable(request: httpx.Request) -> httpx.Response:
        attempts.append(request.url.path)
        raise httpx.ConnectError("connection refused", request=request)

    config_path = tmp_path / "fulfillment.json"
    config_path.write_text(json.dumps({"api_base_url": API, "services": {"wh1": service("wh1")}}))
    app = create_app(config_path, transport=httpx.MockTransport(unreachable), retry_backoff=0.01)
    with serve(app) as url, httpx.Client(base_url=url) as http:
        response = http.post(
            "/wh1/fulfillment_order_notification",
            content=CANCEL,
            headers={"X-Shopify-Hmac-Sha256": sign("secret-wh1", CANCEL)},
        )
        assert response.status_code == 200
        assert app.state.sandbox.wait_idle(timeout=10)
        log = http.get("/_admin/log").json()
    assert len(attempts) == 4
    assert [(e["fulfillment_order_id"], e["action"], e["status_code"]) for e in log] == [
        (None, "failed", None)
    ]


def test_fulfillment_request_is_acknowledged_without_pulling(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1"))
    sandbox.shop.orders = {"token-wh1": [7]}
    assert sandbox.notify("wh1", b'{"kind":"FULFILLMENT_REQUEST"}').status_code == 200
    sandbox.settle()
    assert sandbox.shop.calls == []


def test_reset_forgets_log_and_counters(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1", "fail_first", fail_first=1))
    sandbox.shop.orders = {"token-wh1": [7]}
    assert sandbox.notify("wh1").status_code == 500
    assert sandbox.notify("wh1").status_code == 200
    sandbox.settle()

    assert sandbox.http.post("/_admin/reset").json() == {"ok": True}
    assert sandbox.log() == []
    assert sandbox.http.get("/_admin/notifications").json() == {}
    assert sandbox.notify("wh1").status_code == 500  # fail_first counts again from zero


def test_healthz(sandbox: Sandbox) -> None:
    assert sandbox.http.get("/healthz").json() == {"ok": True}


def test_create_app_refuses_a_missing_or_invalid_config(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="No such file"):
        create_app(tmp_path / "missing.json")
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"services": {"wh1": {"token": "t", "secret": "s", "policy": "maybe"}}}))
    with pytest.raises(ValueError, match="policy"):
        create_app(invalid)


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_runs_as_a_module_against_a_real_api(tmp_path: Path) -> None:
    """End to end over real sockets: the module's CLI, a real fake API served by uvicorn."""

    accepted: list[tuple[int, str | None]] = []
    api = FastAPI()

    @api.get(f"{PREFIX}/assigned_fulfillment_orders.json")
    def assigned(assignment_status: str) -> dict[str, Any]:
        return {"fulfillment_orders": [{"id": 5, "request_status": "cancellation_requested"}]}

    @api.post(f"{PREFIX}/fulfillment_orders/{{fo_id}}/cancellation_request/accept.json")
    def accept(fo_id: int, x_shopify_access_token: str | None = Header(default=None)) -> dict[str, Any]:
        accepted.append((fo_id, x_shopify_access_token))
        return {"fulfillment_order": {"id": fo_id}}

    with serve(api) as api_url:
        config_path = tmp_path / "fulfillment.json"
        config_path.write_text(json.dumps({"api_base_url": api_url, "services": {"wh1": service("wh1")}}))
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "cancelflow.sandbox.fulfillment",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--config={config_path}",
            "--log-level=warning",
        ]
        process = subprocess.Popen(command, env={**os.environ, "PYTHONWARNINGS": "error"})
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_for(lambda: process.poll() is None and _healthy(url), timeout=20)
            response = httpx.post(
                f"{url}/wh1/fulfillment_order_notification",
                content=CANCEL,
                headers={"X-Shopify-Hmac-Sha256": sign("secret-wh1", CANCEL)},
            )
            assert response.status_code == 200
            _wait_for(lambda: len(accepted) == 1)
            _wait_for(lambda: len(httpx.get(f"{url}/_admin/log").json()) == 1)
        finally:
            process.terminate()
            process.wait(timeout=10)
    assert accepted == [(5, "token-wh1")]


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_a_throttled_pull_and_answer_wait_as_told_then_go_through(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1"))
    sandbox.shop.orders = {"token-wh1": [11]}
    sandbox.shop.script = {
        ("GET", f"{PREFIX}/assigned_fulfillment_orders.json"): [429, 429],
        ("POST", f"{PREFIX}/fulfillment_orders/11/cancellation_request/accept.json"): [429],
    }
    sandbox.notify("wh1")
    sandbox.settle()
    assert len(sandbox.shop.pulls()) == 3
    assert [(fo, action) for fo, action, _, _ in sandbox.shop.answers()] == [(11, "accept"), (11, "accept")]
    assert [(e["fulfillment_order_id"], e["action"]) for e in sandbox.log()] == [(11, "accepted")]


def test_every_page_is_pulled_with_since_id_and_every_order_answered_once(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1"))
    sandbox.shop.orders = {"token-wh1": list(range(1, 601))}
    sandbox.notify("wh1")
    sandbox.settle()
    assert [p.params.get("since_id") for p in sandbox.shop.pulls()] == [None, "250", "500"]
    assert sorted(fo for fo, _, _, _ in sandbox.shop.answers()) == list(range(1, 601))


def test_a_burst_of_notifications_during_a_pull_costs_one_more_pull_not_one_each(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1"))
    sandbox.shop.orders = {"token-wh1": list(range(1, 21))}
    sandbox.shop.pull_seconds = 0.3
    for _ in range(20):
        assert sandbox.notify("wh1").status_code == 200
    sandbox.settle()
    assert len(sandbox.shop.pulls()) <= 3  # the first, then one for all that came while it ran
    assert sorted(fo for fo, _, _, _ in sandbox.shop.answers()) == list(range(1, 21))


def test_notifications_closer_than_the_pull_interval_share_a_pull(sandbox: Sandbox) -> None:
    sandbox.configure(wh1=service("wh1", pull_interval_seconds=0.5))
    sandbox.shop.orders = {"token-wh1": list(range(1, 13))}
    # Notifications a few milliseconds apart, each pull over long before the next one comes
    started = time.monotonic()
    for _ in range(12):
        assert sandbox.notify("wh1").status_code == 200
        time.sleep(0.02)
    sent_for = time.monotonic() - started
    sandbox.settle()
    # One pull per half second they came in (and one for the last), not one per notification
    assert len(sandbox.shop.pulls()) <= sent_for / 0.5 + 2 < 12
    assert sorted(fo for fo, _, _, _ in sandbox.shop.answers()) == list(range(1, 13))
