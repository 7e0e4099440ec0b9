"""Throttling through Shopify's own Python client: a client that waits what `throttleStatus` tells it
finishes a burst without an error (tests/graphql/test_throttle.py checks the figures themselves). The
bucket is the real one, in Redis."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import shopify

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
