"""Fuzzing the GraphQL endpoint (hypothesis-graphql): whatever document a version's schema allows, sent by
a merchant or a service token (its own orders or none), is answered by a GraphQL response, never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from graphql import print_schema
from hypothesis import given
from hypothesis import strategies as st
from hypothesis_graphql import from_schema, nodes

from cancelflow.config import get_settings
from cancelflow.graphql.schema import SCHEMAS
from tests.api.test_fulfillment_api import make_fo, make_service, make_token
from tests.harness import repeatable_examples


@pytest.fixture(scope="module", autouse=True)
def _roomy_cost_bucket(database: str) -> Iterator[None]:
    settings = get_settings()
    before = settings.graphql_bucket_size
    settings.graphql_bucket_size = 10**9
    yield
    settings.graphql_bucket_size = before


@pytest.fixture(scope="module")
def world(database: str) -> dict[str, Any]:
    service = make_service()
    fos = [
        make_fo(service)[0],
        make_fo(service, request_status="cancellation_requested")[0],
        make_fo(service, request_status="unsubmitted", status="open")[0],
    ]
    return {"tokens": [make_token("staff"), service.token, make_service().token], "fos": fos}


def _check(client: TestClient, version: str, token: str, query: str) -> None:
    response = client.post(
        f"/admin/api/{version}/graphql.json",
        headers={"X-Shopify-Access-Token": token},
        json={"query": query, "variables": None, "operationName": None},
    )
    assert response.status_code == 200, (query, response.text)
    body = response.json()
    assert set(body) <= {"data", "errors", "extensions"}
    assert "data" in body or body.get("errors"), body
    for error in body.get("errors", ()):
        assert isinstance(error["message"], str)


@pytest.mark.parametrize("version", ["2024-01", "2024-07", "unstable"])
def test_any_document_the_schema_allows_is_answered(
    client: TestClient, world: dict[str, Any], version: str
) -> None:
    documents = from_schema(
        print_schema(SCHEMAS[version]),
        custom_scalars={
            "DateTime": st.just("2026-01-01T00:00:00Z").map(nodes.String),
            "JSON": st.just("{}").map(nodes.String),
            "URL": st.just("https://x.example").map(nodes.String),
        },
    )

    @given(document=documents, token=st.sampled_from(world["tokens"]))
    @repeatable_examples(60)
    def run(document: str, token: str) -> None:
        _check(client, version, token, document)

    run()
