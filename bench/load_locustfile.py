"""The users of `bench/load.py` (run by locust in its own process: locust patches the standard library).

`HealthUser` only asks `GET /healthz`: the bare baseline of the server. `StorefrontUser` is a storefront
in a burst: it creates cancellation requests (each with its own `Idempotency-Key`, on an order item unit
nobody else takes), lists the waiting ones and reads one it created. Configuration comes from the
environment `bench/load.py` sets: LOAD_TOKEN (a storefront token), LOAD_UNITS (a JSON file of order item
ids, one entry per unit still cancellable, shuffled), LOAD_REASON, LOAD_WEIGHTS ("create,list,read") and
LOAD_RESULTS (where every response time, the errors and the ids of the created requests are written when
the run stops).
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

from locust import constant, events, task
from locust.contrib.fasthttp import FastHttpUser

TOKEN = os.environ.get("LOAD_TOKEN", "")
REASON = int(os.environ.get("LOAD_REASON", "1"))
# A valid IBAN and a holder: a refund by bank transfer (orders paid cash on delivery or by transfer) needs
# them, and a card refund ignores them, so every create is valid whatever the order's payment.
IBAN = "TR330006100519786457841326"
HOLDER = "Load Test"
CREATE, LIST, READ = (int(w) for w in os.environ.get("LOAD_WEIGHTS", "8,1,1").split(","))
LIST_QUERY = "?status=waiting&limit=10"


def _units() -> Iterator[int]:
    path = os.environ.get("LOAD_UNITS")
    units: list[int] = json.loads(open(path).read()) if path else []  # noqa: SIM115
    return iter(units)


UNITS = _units()
CREATED: list[int] = []
# Every response as it came, by endpoint: locust's own CSV rounds the times and is written before the
# last requests of a run are counted.
TIMES: dict[str, list[float]] = {}
ERRORS: dict[str, dict[str, int]] = {}
SPAN: list[float] = []  # first request sent, last response received (time.time())


@events.request.add_listener
def _record(
    request_type: str, name: str, response_time: float, exception: BaseException | None, **kwargs: Any
) -> None:
    key = f"{request_type} {name}"
    end = time.time()
    if not SPAN:
        SPAN.extend((end - response_time / 1000, end))
    SPAN[1] = end
    TIMES.setdefault(key, []).append(response_time)
    if exception is not None:
        errors = ERRORS.setdefault(key, {})
        text = str(exception)[:200]
        errors[text] = errors.get(text, 0) + 1


@events.quitting.add_listener
def _write_results(environment: Any, **kwargs: Any) -> None:
    path = os.environ.get("LOAD_RESULTS")
    if path:
        with open(path, "w") as fh:
            json.dump({"times": TIMES, "errors": ERRORS, "span": SPAN, "created": CREATED}, fh)


class HealthUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def healthz(self) -> None:
        self.client.get("/healthz")


class StorefrontUser(FastHttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Token {TOKEN}"}
        self.mine: list[int] = []

    @task(CREATE)
    def create(self) -> None:
        item = next(UNITS, None)
        if item is None:  # the data set is used up: say so rather than send creates that must fail
            self.environment.events.request.fire(
                request_type="POST",
                name="units exhausted",
                response_time=0,
                response_length=0,
                exception=RuntimeError("no order item unit left: import more orders (--orders)"),
            )
            return
        body = {
            "order_item": item,
            "reason": REASON,
            "cancellation_type": "cancel",
            "quantity": 1,
            "iban": IBAN,
            "holder_name": HOLDER,
        }
        headers = {**self.headers, "Idempotency-Key": uuid.uuid4().hex}
        with self.client.post(
            "/api/v1/cancellation_requests/", json=body, headers=headers, catch_response=True
        ) as response:
            if response.status_code != 201:
                response.failure(f"{response.status_code}: {(response.text or '')[:200]}")
                return
            created = int(response.json()["id"])
            self.mine.append(created)
            CREATED.append(created)

    @task(LIST)
    def list_waiting(self) -> None:
        self.client.get(
            f"/api/v1/cancellation_requests/{LIST_QUERY}",
            headers=self.headers,
            name=f"/api/v1/cancellation_requests/{LIST_QUERY}",
        )

    @task(READ)
    def read(self) -> None:
        if not self.mine:
            return
        request_id = random.choice(self.mine[-20:])
        self.client.get(
            f"/api/v1/cancellation_requests/{request_id}/",
            headers=self.headers,
            name="/api/v1/cancellation_requests/{id}/",
        )
