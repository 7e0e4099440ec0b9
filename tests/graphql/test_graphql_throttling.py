"""The GraphQL endpoint's cost and throttling as a Shopify client sees them: `extensions.cost` on every
answer, `MAX_COST_EXCEEDED` before anything runs, `THROTTLED` with no data, and a client that waits what
`throttleStatus` tells it finishing a burst without an error. The bucket is the real one, in Redis."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import shopify
from fastapi.testclient import TestClient

from cancelflow.config import get_settings
from tests.conftest import restored_logging
from tests.factories import token_key
from tests.harness import serving

# 20 aliased shops: 20 objects, so requested and actual cost are both 20.
TWENTY = "{ " + " ".join(f"s{i}: shop {{ name }}" for i in range(20)) + " }"


@pytest.fixture
def small_bucket(database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bucket of 50 points restoring 25 a second: two queries of 20 fit, the third waits."""
    monkeypatch.setattr(get_settings(), "graphql_bucket_size", 50)
    monkeypatch.setattr(get_settings(), "graphql_restore_rate", 25.0)


def post(client: TestClient, token: str, query: str, variables: dict[str, Any] | None = None) -> Any:
    response = client.post(
        "/admin/api/2026-01/graphql.json",
        headers={"X-Shopify-Access-Token": token},
        json={"query": query, "variables": variables, "operationName": None},
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_every_answer_carries_its_cost(client: TestClient) -> None:
    token = token_key("staff")
    body = post(client, token, TWENTY)
    cost = body["extensions"]["cost"]
    assert (cost["requestedQueryCost"], cost["actualQueryCost"]) == (20, 20)
    status = cost["throttleStatus"]
    assert status["maximumAvailable"] == float(get_settings().graphql_bucket_size)
    assert isinstance(status["maximumAvailable"], float)
    assert isinstance(status["currentlyAvailable"], int)
    assert status["currentlyAvailable"] <= status["maximumAvailable"] - 20 + 1
    # A connection is requested by its page size and costs what it returned
    listed = post(
        client,
        token,
        "{ assignedFulfillmentOrders(first: 100, assignmentStatus: CANCELLATION_REQUESTED,"
        ' locationIds: ["gid://shopify/Location/1"]) { nodes { id } } }',
    )
    assert listed["extensions"]["cost"]["requestedQueryCost"] == 102
    assert listed["extensions"]["cost"]["actualQueryCost"] == 2


def test_a_query_over_the_maximum_is_refused_before_it_runs(client: TestClient) -> None:
    token = token_key("staff")
    query = (
        "{ "
        + " ".join(f"a{i}: assignedFulfillmentOrders(first: 250) {{ nodes {{ id }} }}" for i in range(5))
        + " }"
    )
    body = post(client, token, query)
    assert "data" not in body
    [error] = body["errors"]
    assert error["extensions"]["code"] == "MAX_COST_EXCEEDED"
    assert error["extensions"]["cost"] == 5 * 252
    assert body["extensions"]["cost"]["actualQueryCost"] is None
    # Nothing was taken from the bucket
    assert (
        body["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"]
        == get_settings().graphql_bucket_size
    )


def test_over_the_bucket_is_throttled_with_no_data(
    client: TestClient, small_bucket: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "graphql_restore_rate", 1.0)  # nothing comes back meanwhile
    token = token_key("staff")
    assert "errors" not in post(client, token, TWENTY)
    assert "errors" not in post(client, token, TWENTY)
    body = post(client, token, TWENTY)
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == "THROTTLED"
    cost = body["extensions"]["cost"]
    assert (cost["requestedQueryCost"], cost["actualQueryCost"]) == (20, None)
    assert cost["throttleStatus"]["currentlyAvailable"] < 20
    assert cost["throttleStatus"]["restoreRate"] == 1.0
    # Another token has its own bucket
    assert "errors" not in post(client, token_key("staff"), TWENTY)


def test_a_client_that_honours_throttle_status_finishes_a_burst(small_bucket: None) -> None:
    """Shopify's own client, over a real socket: it waits what `throttleStatus` says before each query
    that would not fit, and never sees THROTTLED."""
    token = token_key("staff")
    answers: list[dict[str, Any]] = []
    from cancelflow.api.app import create_app

    with restored_logging(), serving(create_app()) as host:
        shopify.ShopifyResource.site = f"http://{host}/admin/api/2024-07"
        shopify.ShopifyResource.get_headers()["X-Shopify-Access-Token"] = token
        try:
            available, rate = 50.0, 25.0
            for _ in range(8):
                if available < 20:
                    time.sleep((20 - available) / rate + 0.05)
                body = json.loads(shopify.GraphQL().execute(TWENTY))
                answers.append(body)
                status = body["extensions"]["cost"]["throttleStatus"]
                available, rate = status["currentlyAvailable"], status["restoreRate"]
        finally:
            shopify.ShopifyResource.clear_session()
    assert [("errors" in a) for a in answers] == [False] * 8
    assert all(len(a["data"]) == 20 for a in answers)
    # And the burst did drain the bucket: one asking at once would have been throttled
    assert min(a["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"] for a in answers) < 20
