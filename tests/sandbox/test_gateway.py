"""The sandbox payment gateway: Stripe-style idempotency, failure injection, persistence."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cancelflow.sandbox.gateway import GatewayState, create_app, mask_iban
from tests.harness import free_port

from . import serve

IBAN = "DE89370400440532013000"
REFUND = {"payment_reference": "pi_123", "amount": "12.50", "currency": "EUR"}
TRANSFER = {"iban": IBAN, "holder_name": "Ada Lovelace", "amount": "30.00", "currency": "EUR"}


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with serve(create_app()) as url, httpx.Client(base_url=url, timeout=10) as c:
        yield c


def post(client: httpx.Client, path: str, body: dict[str, Any], key: str | None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post(path, json=body, headers=headers)


def test_missing_idempotency_key_is_400(client: httpx.Client) -> None:
    for path, body in (("/refunds", REFUND), ("/transfers", TRANSFER)):
        response = post(client, path, body, key=None)
        assert response.status_code == 400
        assert "Idempotency-Key" in response.json()["error"]
        assert post(client, path, body, key="").status_code == 400
    assert client.get("/refunds").json() == {"data": []}
    assert client.get("/transfers").json() == {"data": []}


def test_first_call_creates_and_a_retry_replays_the_same_refund(client: httpx.Client) -> None:
    first = post(client, "/refunds", REFUND, key="order-1-refund")
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    refund = first.json()
    assert refund["id"].startswith("re_")
    assert refund["object"] == "refund"
    assert refund["status"] == "succeeded"
    assert refund["amount"] == "12.50"
    assert refund["currency"] == "EUR"
    assert refund["payment_reference"] == "pi_123"
    assert refund["idempotency_key"] == "order-1-refund"
    assert refund["created_at"]

    again = post(client, "/refunds", REFUND, key="order-1-refund")
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == refund

    assert client.get("/refunds").json() == {"data": [refund]}
    assert client.get("/_admin/calls").json() == {"order-1-refund": 2}


def test_transfer_is_idempotent_too(client: httpx.Client) -> None:
    first = post(client, "/transfers", TRANSFER, key="order-2-transfer")
    assert first.status_code == 201
    transfer = first.json()
    assert transfer["id"].startswith("tr_")
    assert transfer["object"] == "transfer"
    assert transfer["iban"] == IBAN
    assert transfer["holder_name"] == "Ada Lovelace"

    again = post(client, "/transfers", TRANSFER, key="order-2-transfer")
    assert (again.status_code, again.json()["id"]) == (200, transfer["id"])
    assert client.get("/transfers").json() == {"data": [transfer]}
    assert client.get("/refunds").json() == {"data": []}


def test_same_amount_spelled_differently_is_a_replay(client: httpx.Client) -> None:
    first = post(client, "/refunds", REFUND, key="k")
    again = post(client, "/refunds", {**REFUND, "amount": "12.5", "currency": "eur"}, key="k")
    assert again.status_code == 200
    assert again.json() == first.json()


@pytest.mark.parametrize(
    "change",
    [{"amount": "12.51"}, {"payment_reference": "pi_other"}, {"currency": "USD"}],
)
def test_same_key_with_a_different_body_is_422(client: httpx.Client, change: dict[str, str]) -> None:
    assert post(client, "/refunds", REFUND, key="k").status_code == 201
    response = post(client, "/refunds", {**REFUND, **change}, key="k")
    assert response.status_code == 422
    assert response.json() == {"error": "idempotency key reused with a different body"}
    assert len(client.get("/refunds").json()["data"]) == 1


def test_same_key_on_the_other_endpoint_is_422(client: httpx.Client) -> None:
    assert post(client, "/refunds", REFUND, key="k").status_code == 201
    response = post(client, "/transfers", TRANSFER, key="k")
    assert response.status_code == 422
    assert client.get("/transfers").json() == {"data": []}


@pytest.mark.parametrize("amount", ["0", "-1.00", "abc", "NaN", "Infinity", 12.5, None])
def test_amount_must_be_a_positive_decimal_string(client: httpx.Client, amount: object) -> None:
    response = post(client, "/refunds", {**REFUND, "amount": amount}, key=f"bad-{amount}")
    assert response.status_code == 422
    assert response.json()["error"] == "invalid request body"
    assert client.get("/refunds").json() == {"data": []}


def test_malformed_json_is_422(client: httpx.Client) -> None:
    response = client.post("/refunds", content=b"{not json", headers={"Idempotency-Key": "k"})
    assert response.status_code == 422


def test_fail_first_n_answers_503_per_key_and_records_nothing(client: httpx.Client) -> None:
    assert client.post("/_admin/config", json={"fail_first_n": 2}).status_code == 200

    for _ in range(2):
        failed = post(client, "/refunds", REFUND, key="a")
        assert failed.status_code == 503
        assert failed.json() == {"error": "temporarily unavailable"}
        assert client.get("/refunds").json() == {"data": []}
    created = post(client, "/refunds", REFUND, key="a")
    assert created.status_code == 201

    # The count is per key: a new key starts failing again.
    assert post(client, "/refunds", REFUND, key="b").status_code == 503
    assert client.get("/_admin/calls").json() == {"a": 3, "b": 1}
    assert [r["id"] for r in client.get("/refunds").json()["data"]] == [created.json()["id"]]


def test_fail_rate_injects_random_503s(client: httpx.Client) -> None:
    client.post("/_admin/config", json={"fail_rate": 1.0})
    assert post(client, "/refunds", REFUND, key="k").status_code == 503
    client.post("/_admin/config", json={"fail_rate": 0.0})
    assert post(client, "/refunds", REFUND, key="k").status_code == 201


def test_config_is_partially_updatable_and_validated(client: httpx.Client) -> None:
    assert client.get("/_admin/config").json() == {"fail_first_n": 0, "fail_rate": 0.0, "delay_seconds": 0.0}
    client.post("/_admin/config", json={"fail_first_n": 1})
    updated = client.post("/_admin/config", json={"delay_seconds": 0.25}).json()
    assert updated == {"fail_first_n": 1, "fail_rate": 0.0, "delay_seconds": 0.25}
    assert client.get("/_admin/config").json() == updated
    for invalid in ({"fail_rate": 1.5}, {"fail_first_n": -1}, {"delay_seconds": -1}, {"unknown": 1}):
        assert client.post("/_admin/config", json=invalid).status_code == 422
    assert client.get("/_admin/config").json() == updated


def test_a_key_in_flight_answers_409_to_a_concurrent_request() -> None:
    app = create_app()
    state: GatewayState = app.state.gateway
    with serve(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        client.post("/_admin/config", json={"delay_seconds": 1.0})
        results: dict[str, httpx.Response] = {}

        def first() -> None:
            with httpx.Client(base_url=url, timeout=10) as own:
                results["first"] = post(own, "/refunds", REFUND, key="k")

        thread = threading.Thread(target=first)
        thread.start()
        # The key is reserved at receipt, before the delay: wait for the reservation itself.
        deadline = time.monotonic() + 5
        while "k" not in state.in_flight():
            assert time.monotonic() < deadline, "first request never reserved its key"
            time.sleep(0.005)

        concurrent = post(client, "/refunds", REFUND, key="k")
        assert concurrent.status_code == 409
        assert concurrent.json() == {"error": "in flight"}
        assert concurrent.headers["Retry-After"] == "1"  # when the first request should be done
        assert client.get("/refunds").json() == {"data": []}

        thread.join(timeout=10)
        assert results["first"].status_code == 201
        assert state.in_flight() == []
        client.post("/_admin/config", json={"delay_seconds": 0})
        replay = post(client, "/refunds", REFUND, key="k")
        assert (replay.status_code, replay.json()) == (200, results["first"].json())
        assert client.get("/_admin/calls").json() == {"k": 3}
        assert len(client.get("/refunds").json()["data"]) == 1


def test_concurrent_retries_execute_a_movement_once() -> None:
    app = create_app()
    with serve(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        client.post("/_admin/config", json={"delay_seconds": 0.2})
        barrier = threading.Barrier(8)
        codes: list[int] = []
        lock = threading.Lock()

        def retry() -> None:
            with httpx.Client(base_url=url, timeout=10) as own:
                barrier.wait()
                code = post(own, "/refunds", REFUND, key="k").status_code
            with lock:
                codes.append(code)

        threads = [threading.Thread(target=retry) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)

        # One retry executes the movement; the others find it in flight (409) or, when the machine is slow
        # enough that they arrive after it finished, replay its answer (200): none executes it again.
        assert len(codes) == 8
        assert sorted(codes).count(201) == 1
        assert set(codes) <= {200, 201, 409}
        assert len(client.get("/refunds").json()["data"]) == 1


def test_state_file_survives_a_restart(tmp_path: Path) -> None:
    state_file = tmp_path / "gateway.jsonl"
    with serve(create_app(state_file)) as url, httpx.Client(base_url=url, timeout=10) as client:
        refund = post(client, "/refunds", REFUND, key="r").json()
        transfer = post(client, "/transfers", TRANSFER, key="t").json()

    with serve(create_app(state_file)) as url, httpx.Client(base_url=url, timeout=10) as client:
        replay = post(client, "/refunds", REFUND, key="r")
        assert (replay.status_code, replay.json()) == (200, refund)
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert post(client, "/transfers", TRANSFER, key="t").json() == transfer
        assert post(client, "/refunds", {**REFUND, "amount": "1.00"}, key="r").status_code == 422
        assert client.get("/refunds").json() == {"data": [refund]}
        assert client.get("/transfers").json() == {"data": [transfer]}


def test_a_torn_last_line_of_the_state_file_is_skipped(tmp_path: Path) -> None:
    state_file = tmp_path / "gateway.jsonl"
    with serve(create_app(state_file)) as url, httpx.Client(base_url=url, timeout=10) as client:
        refund = post(client, "/refunds", REFUND, key="r").json()
    with state_file.open("a", encoding="utf-8") as fh:
        fh.write('{"v":1,"request":{"kind":"refund"')  # a crash mid-append

    with serve(create_app(state_file)) as url, httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/refunds").json() == {"data": [refund]}
        assert post(client, "/refunds", REFUND, key="other").status_code == 201
    # The torn tail was cut off, so the new movement is a line of its own and every line parses.
    lines = state_file.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["movement"]["idempotency_key"] for line in lines] == ["r", "other"]


def test_reset_clears_state_config_and_the_state_file(tmp_path: Path) -> None:
    state_file = tmp_path / "gateway.jsonl"
    with serve(create_app(state_file)) as url, httpx.Client(base_url=url, timeout=10) as client:
        first = post(client, "/refunds", REFUND, key="k").json()
        client.post("/_admin/config", json={"fail_rate": 0.5})

        assert client.post("/_admin/reset").json() == {"ok": True}

        assert client.get("/refunds").json() == {"data": []}
        assert client.get("/_admin/calls").json() == {}
        assert client.get("/_admin/config").json()["fail_rate"] == 0.0
        assert state_file.read_text(encoding="utf-8") == ""
        again = post(client, "/refunds", REFUND, key="k")
        assert again.status_code == 201
        assert again.json()["id"] != first["id"]


def test_logs_every_call_and_never_an_iban(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cancelflow.sandbox.gateway")
    post(client, "/transfers", TRANSFER, key="t-1")
    post(client, "/transfers", TRANSFER, key="t-1")
    post(client, "/transfers", {**TRANSFER, "amount": "1"}, key="t-1")

    messages = [r.getMessage() for r in caplog.records if r.name == "cancelflow.sandbox.gateway"]
    assert len(messages) == 3
    # The gateway masks the IBAN itself; the log filter then withholds the iban= value altogether.
    assert all("key=t-1" in m and ("iban=<redacted>" in m or mask_iban(IBAN) in m) for m in messages)
    assert IBAN not in caplog.text
    assert "Ada Lovelace" not in caplog.text


def test_mask_iban_keeps_only_the_last_four_characters() -> None:
    assert mask_iban("DE89 3704 0044 0532 0130 00") == "*" * 18 + "3000"
    assert mask_iban("123") == "***"


def test_healthz(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"ok": True}


def test_runs_as_a_module_with_cli_flags(tmp_path: Path) -> None:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "cancelflow.sandbox.gateway",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--state-file={tmp_path / 'state.jsonl'}",
        "--fail-first-n=1",
        "--fail-rate=0",
        "--delay-seconds=0",
        "--log-level=warning",
    ]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONWARNINGS": "error"})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, "gateway exited"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "gateway did not come up"
            time.sleep(0.05)
        assert httpx.get(f"{url}/_admin/config").json()["fail_first_n"] == 1
        assert httpx.post(f"{url}/refunds", json=REFUND, headers={"Idempotency-Key": "k"}).status_code == 503
        assert httpx.post(f"{url}/refunds", json=REFUND, headers={"Idempotency-Key": "k"}).status_code == 201
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert (tmp_path / "state.jsonl").read_text(encoding="utf-8").count("\n") == 1


def test_cli_rejects_an_invalid_failure_rate() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cancelflow.sandbox.gateway", "--fail-rate=2"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "fail_rate" in result.stderr
