"""GraphQL query cost and throttling over real HTTP (uvicorn on a loopback port), as Shopify's clients read
them: `extensions.cost` on every answer, a query over the single-query maximum refused before it runs
(`MAX_COST_EXCEEDED`), a query the bucket cannot pay for refused with `THROTTLED` (no `data`,
`actualQueryCost: null`), and a client that waits what `throttleStatus` tells it finishes a burst without
an error. The clock is frozen (time-machine) where the figures are exact, and moved by the client's waits.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import time_machine

from cancelflow.config import get_settings
from tests.factories import token_key

VERSION = "2026-01"
ENDPOINT = f"/admin/api/{VERSION}/graphql.json"
FIFTY = "{ " + " ".join(f"s{i}: shop {{ name }}" for i in range(50)) + " }"  # 50 objects: 50 points


@pytest.fixture
def key() -> str:
    return token_key("staff")


def post(http: httpx.Client, key: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    answer = http.post(
        ENDPOINT,
        headers={"X-Shopify-Access-Token": key},
        json={"query": query, "variables": variables, "operationName": None},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert isinstance(body, dict)
    return body


def status(available: int) -> dict[str, Any]:
    return {"maximumAvailable": 1000.0, "currentlyAvailable": available, "restoreRate": 50.0}


def test_every_answer_carries_the_cost(http: httpx.Client, key: str, frozen: object) -> None:
    ok = post(http, key, "{ shop { name } }")
    assert ok["data"]["shop"]["name"]
    assert ok["extensions"]["cost"] == {
        "requestedQueryCost": 1,
        "actualQueryCost": 1,
        "throttleStatus": status(999),
    }
    # A connection asks for what it may page over and pays for what it returned
    pending = post(
        http,
        key,
        "{ assignedFulfillmentOrders(first: 100, assignmentStatus: CANCELLATION_REQUESTED) "
        "{ nodes { id lineItems(first: 5) { nodes { id } } } } }",
    )
    cost = pending["extensions"]["cost"]
    returned = len(pending["data"]["assignedFulfillmentOrders"]["nodes"])
    assert cost["requestedQueryCost"] == 2 + 100 * (1 + 2 + 5)
    assert cost["actualQueryCost"] <= 2 + returned * (1 + 2 + 5)
    assert cost["throttleStatus"] == status(999 - cost["actualQueryCost"])
    # An answer refused by a limit too: it costs nothing and still says where the bucket stands
    refused = post(http, key, "{ assignedFulfillmentOrders(first: 251) { nodes { id } } }")
    assert "data" not in refused
    assert refused["errors"][0]["extensions"]["code"] == "MAX_PAGE_SIZE_EXCEEDED"
    assert refused["extensions"]["cost"] == {
        "requestedQueryCost": 0,
        "actualQueryCost": None,
        "throttleStatus": status(999 - cost["actualQueryCost"]),
    }


def test_a_query_over_the_maximum_is_refused_before_it_runs(
    http: httpx.Client, key: str, frozen: object
) -> None:
    # 4 x (2 + 250) = 1,008 points
    query = (
        "{ "
        + " ".join(f"a{i}: assignedFulfillmentOrders(first: 250) {{ nodes {{ id }} }}" for i in range(4))
        + " }"
    )
    body = post(http, key, query)
    assert "data" not in body or body["data"] is None
    (error,) = body["errors"]
    assert error["extensions"] == {
        "code": "MAX_COST_EXCEEDED",
        "cost": 1008,
        "maxCost": 1000,
        "documentation": "https://shopify.dev/api/usage/limits#rate-limits",
    }
    assert error["message"].startswith(
        "Query cost is 1008, which exceeds the single query max cost limit (1000)."
    )
    # and took nothing from the bucket
    assert post(http, key, "{ shop { name } }")["extensions"]["cost"]["throttleStatus"] == status(999)


def test_a_query_the_bucket_cannot_pay_for_is_throttled(
    http: httpx.Client, key: str, frozen: time_machine.Coordinates
) -> None:
    for n in range(20):
        assert post(http, key, FIFTY)["extensions"]["cost"]["throttleStatus"] == status(1000 - 50 * (n + 1))
    throttled = post(http, key, FIFTY)
    assert "data" not in throttled
    assert throttled["errors"] == [
        {
            "message": "Throttled",
            "extensions": {"code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"},
        }
    ]
    assert throttled["extensions"] == {
        "cost": {"requestedQueryCost": 50, "actualQueryCost": None, "throttleStatus": status(0)}
    }
    frozen.shift(1)  # 50 points restored
    assert post(http, key, FIFTY)["extensions"]["cost"]["throttleStatus"] == status(0)


def test_each_token_has_its_own_bucket(http: httpx.Client, key: str, frozen: object) -> None:
    for _ in range(20):
        post(http, key, FIFTY)
    assert post(http, key, FIFTY)["errors"][0]["extensions"]["code"] == "THROTTLED"
    other = post(http, token_key("staff"), FIFTY)
    assert other["extensions"]["cost"]["throttleStatus"] == status(950)


def polite(http: httpx.Client, key: str, query: str, wait: Any) -> tuple[dict[str, Any], int]:
    """Shopify's advice: on THROTTLED wait until the requested cost has been restored, then ask again."""
    throttles = 0
    while True:
        body = post(http, key, query)
        codes = [e.get("extensions", {}).get("code") for e in body.get("errors", [])]
        if "THROTTLED" not in codes:
            return body, throttles
        throttles += 1
        cost = body["extensions"]["cost"]
        short = cost["requestedQueryCost"] - cost["throttleStatus"]["currentlyAvailable"]
        wait(short / cost["throttleStatus"]["restoreRate"])


def test_a_client_that_honours_the_throttle_status_finishes_a_burst(
    http: httpx.Client, key: str, frozen: time_machine.Coordinates
) -> None:
    answers = [polite(http, key, FIFTY, frozen.shift) for _ in range(40)]
    assert all("errors" not in body and body["data"]["s0"]["name"] for body, _ in answers)
    # the first 20 were paid from the full bucket, each later one waited once, and once was enough
    assert [throttles for _, throttles in answers] == [0] * 20 + [1] * 20


def test_in_real_time_too(http: httpx.Client, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A small bucket restoring fast, so the burst overflows it whatever the machine's speed and waits little
    monkeypatch.setattr(get_settings(), "graphql_bucket_size", 120)
    monkeypatch.setattr(get_settings(), "graphql_restore_rate", 500.0)
    answers = [polite(http, key, FIFTY, time.sleep) for _ in range(15)]
    assert all("errors" not in body for body, _ in answers)
