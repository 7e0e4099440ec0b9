"""Shopify's REST call limit over real HTTP (uvicorn on a loopback port), with Shopify's figures: a bucket
of 40 calls per token leaking 2 per second, `X-Shopify-Shop-Api-Call-Limit` on every answer, 429 with
`Retry-After` and Shopify's body when it overflows. The clock is frozen (time-machine) where the figures
are exact, and moved by the `Retry-After` a polite client waits."""

from __future__ import annotations

import time

import httpx
import pytest
import time_machine

from cancelflow.api.app import create_app
from cancelflow.config import get_settings
from tests.conftest import restored_logging
from tests.factories import token_key
from tests.harness import serving

LIST = "/admin/api/2021-01/assigned_fulfillment_orders.json"
HEADER = "X-Shopify-Shop-Api-Call-Limit"
OVER = {
    "errors": "Exceeded 2 calls per second for api client. Reduce request rates to resume uninterrupted service."
}


@pytest.fixture
def shopify_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "shopify_rest_bucket_size", 40)
    monkeypatch.setattr(get_settings(), "shopify_rest_leak_rate", 2.0)


def shopify(key: str) -> dict[str, str]:
    return {"X-Shopify-Access-Token": key}


@pytest.mark.usefixtures("shopify_figures")
class TestCallLimit:
    def test_every_answer_says_how_full_the_bucket_is(self, http: httpx.Client, frozen: object) -> None:
        key = token_key("staff")
        answers = [
            http.get(LIST, headers=shopify(key)),
            http.get("/admin/api/2021-01/fulfillment_orders/999999999.json", headers=shopify(key)),  # 404
            http.post(
                "/admin/api/2021-01/fulfillment_orders/1/cancellation_request.json",
                headers={**shopify(key), "Content-Type": "application/json"},
                content=b"{not json",
            ),  # 400
        ]
        assert [a.status_code for a in answers] == [200, 404, 400]
        assert [a.headers[HEADER] for a in answers] == ["1/40", "2/40", "3/40"]
        # An unknown token has a bucket of its own (and its 401); no token, no bucket.
        unknown = http.get(LIST, headers=shopify("not-a-token"))
        assert (unknown.status_code, unknown.headers[HEADER]) == (401, "1/40")
        assert HEADER not in http.get(LIST).headers

    def test_the_41st_call_of_a_burst_is_refused_until_the_bucket_leaks(
        self, http: httpx.Client, frozen: time_machine.Coordinates
    ) -> None:
        key = token_key("staff")
        answers = [http.get(LIST, headers=shopify(key)) for _ in range(41)]
        assert [a.status_code for a in answers] == [200] * 40 + [429]
        assert answers[39].headers[HEADER] == "40/40"
        refused = answers[40]
        assert refused.json() == OVER
        assert (refused.headers[HEADER], refused.headers["Retry-After"]) == ("40/40", "0.5")
        assert refused.headers["X-Shopify-API-Version"] == "2021-01"
        # Then half a second later one call fits again, and only one
        frozen.shift(0.5)
        assert [http.get(LIST, headers=shopify(key)).status_code for _ in range(2)] == [200, 429]
        # and twenty seconds empty the bucket
        frozen.shift(20)
        assert http.get(LIST, headers=shopify(key)).headers[HEADER] == "1/40"

    def test_each_token_has_its_own_bucket(self, http: httpx.Client, frozen: object) -> None:
        first, second = token_key("staff"), token_key("staff")
        for _ in range(40):
            http.get(LIST, headers=shopify(first))
        assert http.get(LIST, headers=shopify(first)).status_code == 429
        assert http.get(LIST, headers=shopify(second)).headers[HEADER] == "1/40"

    def test_every_replica_fills_the_same_bucket(self, http: httpx.Client, frozen: object) -> None:
        key = token_key("staff")
        with restored_logging(), serving(create_app()) as other:
            codes = [
                httpx.get(f"{base}{LIST}", headers=shopify(key), timeout=30).status_code
                for base in [str(http.base_url).rstrip("/"), f"http://{other}"] * 21
            ]
        assert codes == [200] * 40 + [429, 429]

    def test_graphql_is_not_counted_here(self, http: httpx.Client, frozen: object) -> None:
        answer = http.post(
            "/admin/api/2024-01/graphql.json",
            headers=shopify(token_key("staff")),
            json={"query": "{ shop { name } }"},
        )
        assert HEADER not in answer.headers

    def test_a_client_that_waits_retry_after_finishes_its_burst_without_an_error(
        self, http: httpx.Client, frozen: time_machine.Coordinates
    ) -> None:
        key = token_key("staff")
        refusals = 0

        def polite_get() -> httpx.Response:
            nonlocal refusals
            while True:
                answer = http.get(LIST, headers=shopify(key))
                if answer.status_code != 429:
                    return answer
                refusals += 1
                frozen.shift(float(answer.headers["Retry-After"]))  # the client's sleep

        answers = [polite_get() for _ in range(100)]
        assert {a.status_code for a in answers} == {200}
        assert refusals == 60  # each call past the 40th waited once, and once was enough
        assert all(int(a.headers[HEADER].split("/")[0]) <= 40 for a in answers)


def test_a_polite_client_in_real_time_finishes_without_an_error(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small fast bucket, so the burst overflows it whatever the machine's speed and waits little.
    monkeypatch.setattr(get_settings(), "shopify_rest_bucket_size", 3)
    monkeypatch.setattr(get_settings(), "shopify_rest_leak_rate", 20.0)
    key = token_key("staff")
    statuses: list[int] = []
    for _ in range(20):
        while True:
            answer = http.get(LIST, headers=shopify(key))
            statuses.append(answer.status_code)
            if answer.status_code != 429:
                break
            time.sleep(float(answer.headers["Retry-After"]))
        assert answer.status_code == 200
        assert int(answer.headers[HEADER].split("/")[0]) <= 3
    assert statuses.count(200) == 20
