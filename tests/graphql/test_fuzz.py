"""Fuzzing the GraphQL endpoint: hypothesis-graphql builds queries and mutations from each version's
schema (valid ones, and invalid ones in its negative mode), and each goes to the real endpoint with a
real token. Whatever is sent, the answer is never a server error, and every 200 is a GraphQL envelope
(`data` and/or `errors`, and `extensions.cost` on every answer)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, mutations, queries

from cancelflow.api.app import create_app
from cancelflow.config import get_settings
from cancelflow.graphql.schema import SCHEMAS
from cancelflow.graphql.versions import VERSIONS
from tests.conftest import restored_logging
from tests.factories import new_service, token_key

EXAMPLES = 12  # per version and kind: 14 versions x 3 kinds x 12 requests (the same ones each run)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@pytest.fixture(scope="module")
def client(database: str) -> Iterator[TestClient]:
    # An unhandled error must come back as the 500 a client would see, not as an exception in the test.
    with restored_logging(), TestClient(create_app(), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def keys(database: str) -> dict[str, str]:
    service = new_service()
    return {
        "staff": token_key("staff"),
        "service": token_key("fulfillment_service", fulfillment_service_handle=service.handle),
    }


@pytest.fixture(autouse=True)
def roomy_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    # Throttling is tested in test_throttle.py; here every query should reach execution.
    monkeypatch.setattr(get_settings(), "graphql_bucket_size", 10**9)


def check(client: TestClient, version: str, key: str, query: Any) -> None:
    text = query.decode() if isinstance(query, bytes) else str(query)
    answer = client.post(
        f"/admin/api/{version}/graphql.json",
        headers={"X-Shopify-Access-Token": key},
        json={"query": text, "variables": None, "operationName": None},
    )
    assert answer.status_code < 500, (answer.status_code, text, answer.text)
    body = answer.json()
    assert isinstance(body, dict), body
    if answer.status_code != 200:
        assert "errors" in body, body  # Shopify's non-GraphQL error bodies: {"errors": ...}
        return
    assert set(body) <= {"data", "errors", "extensions"}, body
    assert "data" in body or body.get("errors"), body
    if "errors" in body:
        assert all(isinstance(e.get("message"), str) for e in body["errors"]), body
    assert set(body["extensions"]["cost"]) == {"requestedQueryCost", "actualQueryCost", "throttleStatus"}, (
        body
    )
    if body["extensions"]["cost"]["actualQueryCost"] is None:  # refused before running: nothing ran
        assert "data" not in body, body
        assert body["errors"], body


@pytest.mark.parametrize("version", VERSIONS)
def test_queries(client: TestClient, keys: dict[str, str], version: str) -> None:
    @FUZZ
    @given(query=queries(SCHEMAS[version]), who=st.sampled_from(sorted(keys)))
    def run(query: Any, who: str) -> None:
        check(client, version, keys[who], query)

    run()


@pytest.mark.parametrize("version", VERSIONS)
def test_mutations(client: TestClient, keys: dict[str, str], version: str) -> None:
    @FUZZ
    @given(query=mutations(SCHEMAS[version]), who=st.sampled_from(sorted(keys)))
    def run(query: Any, who: str) -> None:
        check(client, version, keys[who], query)

    run()


@pytest.mark.parametrize("version", VERSIONS)
def test_invalid_documents(client: TestClient, keys: dict[str, str], version: str) -> None:
    @FUZZ
    @given(
        query=queries(SCHEMAS[version], mode=Mode.NEGATIVE) | mutations(SCHEMAS[version], mode=Mode.NEGATIVE)
    )
    def run(query: Any) -> None:
        check(client, version, keys["staff"], query)

    run()
