"""A body too deeply nested (or not UTF-8) for the JSON parser gets the documented parse error of its
router, as a syntax error does: DRF's `{"detail": "JSON parse error - ...", "code": "parse_error"}` under
`/api/`, Shopify's `{"errors": "JSON parse error - ..."}` under `/admin/api/`; never FastAPI's own text
and never a 500 (the tag lists read their optional body themselves)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from cancelflow.api.app import create_app
from tests.factories import token_key

DEEP = b"[" * 100_000 + b"]" * 100_000
NOT_UTF8 = b'{"key": "\xff\xfe"}'
AKINON_POSTS = [
    "/api/v1/cancellation_requests/",
    "/api/v1/channel/1/cancellation_requests/",
    "/api/v1/orders/",
    "/api/v1/auth/login/",
    "/api/v1/cancellation_requests/bulk_add_tags/",
]
SHOPIFY_POSTS = [
    "/admin/api/2021-07/fulfillment_orders/1/cancellation_request.json",
    "/admin/api/2021-07/fulfillment_orders/1/cancellation_request/accept.json",
]


@pytest.fixture(scope="module")
def client(database: str) -> Iterator[TestClient]:
    with TestClient(create_app(), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def key(database: str) -> str:
    return token_key("staff")


@pytest.mark.parametrize("body", [DEEP, NOT_UTF8], ids=["deep", "not utf-8"])
@pytest.mark.parametrize("path", AKINON_POSTS)
def test_akinon_routes(client: TestClient, key: str, path: str, body: bytes) -> None:
    headers = {"Authorization": f"Token {key}", "Content-Type": "application/json"}
    response = client.post(path, headers=headers, content=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "parse_error"
    assert set(response.json()) == {"detail", "code"}
    assert response.json()["detail"].startswith("JSON parse error - ")


@pytest.mark.parametrize("body", [DEEP, NOT_UTF8], ids=["deep", "not utf-8"])
@pytest.mark.parametrize(
    "path",
    ["/api/v1/cancellation_requests/filter_by_tags/", "/api/v1/cancellation_requests/exclude_by_tags/"],
)
def test_tag_lists_reading_their_own_body(client: TestClient, key: str, path: str, body: bytes) -> None:
    response = client.request("GET", path, headers={"Authorization": f"Token {key}"}, content=body)
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": response.json()["detail"], "code": "parse_error"}


@pytest.mark.parametrize("body", [DEEP, NOT_UTF8], ids=["deep", "not utf-8"])
@pytest.mark.parametrize("path", SHOPIFY_POSTS)
def test_shopify_routes(client: TestClient, key: str, path: str, body: bytes) -> None:
    headers = {"X-Shopify-Access-Token": key, "Content-Type": "application/json"}
    response = client.post(path, headers=headers, content=body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"errors"}
    assert response.json()["errors"].startswith("JSON parse error - ")
