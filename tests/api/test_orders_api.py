"""Order import and lookup over HTTP (`/api/v1/orders/`), the Akinon error dialect, and the app itself."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cancelflow.db import transaction
from tests.factories import auth, next_id, order_payload, reference_payload, service_payload, token_key

ORDERS = "/api/v1/orders/"


def make_token(kind: str, *, handle: str | None = None) -> str:
    return token_key(kind, fulfillment_service_handle=handle)


@pytest.fixture(scope="module")
def staff(database: str) -> str:
    return make_token("staff")


def import_body(**order_kwargs: Any) -> dict[str, Any]:
    service = service_payload()
    return {
        **reference_payload(),
        "fulfillment_services": [service],
        "orders": [order_payload(service_handle=service["handle"], items=2, **order_kwargs)],
    }


class TestImport:
    def test_import_then_reimport(self, client: TestClient, staff: str) -> None:
        body = import_body()
        first = client.post(ORDERS, headers=auth(staff), json=body)
        assert first.status_code == 201, first.text
        counts = first.json()["imported"]
        assert counts["orders"] == 1
        assert counts["order_items"] == 2
        assert counts["payments"] == 1
        assert counts["fulfillment_orders"] == 1
        assert counts["fulfillment_order_line_items"] == 2
        assert counts["fulfillment_services"] == 1
        again = client.post(ORDERS, headers=auth(staff), json=body)
        assert again.status_code == 200, again.text
        assert set(again.json()["imported"]) == set(counts)
        assert all(value == 0 for value in again.json()["imported"].values())

    def test_imported_order_can_be_read_back(self, client: TestClient, staff: str) -> None:
        body = import_body(unit_price="12.50")
        assert client.post(ORDERS, headers=auth(staff), json=body).status_code == 201
        order = body["orders"][0]
        response = client.get(f"{ORDERS}{order['id']}/", headers=auth(staff))
        assert response.status_code == 200, response.text
        got = response.json()
        assert (got["id"], got["number"], got["channel"], got["customer"]) == (
            order["id"],
            order["number"],
            order["channel"],
            order["customer"]["id"],
        )
        assert [item["id"] for item in got["items"]] == [item["id"] for item in order["items"]]
        assert got["items"][0]["unit_price"] == "12.50"
        assert got["items"][0]["requested_quantity"] == 0
        assert got["payment"]["method"] == "card"
        assert got["payment"]["reference"] == order["payment"]["reference"]
        assert got["fulfillment_orders"] == [order["fulfillment_orders"][0]["id"]]

    def test_unknown_order_is_404(self, client: TestClient, staff: str) -> None:
        response = client.get(f"{ORDERS}{next_id()}/", headers=auth(staff))
        assert response.status_code == 404
        assert response.json() == {"detail": "Not found."}

    @pytest.mark.parametrize("bad_id", ["abc", "0", str(2**63)])
    def test_malformed_order_id_is_404(self, client: TestClient, staff: str, bad_id: str) -> None:
        response = client.get(f"{ORDERS}{bad_id}/", headers=auth(staff))
        assert response.status_code == 404
        assert response.json() == {"detail": "Not found."}

    def test_invalid_payload_is_400_with_field_errors(self, client: TestClient, staff: str) -> None:
        body = import_body()
        order = body["orders"][0]
        del order["items"]
        order["currency"] = "euro"
        response = client.post(ORDERS, headers=auth(staff), json=body)
        assert response.status_code == 400
        errors = response.json()
        assert errors["code"] == "invalid"
        assert errors["orders.0.items"] == ["This field is required."]
        assert "orders.0.currency" in errors
        assert all(isinstance(v, list) for k, v in errors.items() if k != "code")

    def test_unknown_references_are_400(self, client: TestClient, staff: str) -> None:
        body = import_body(channel=987654)
        body["orders"][0]["customer"]["channel"] = 1
        response = client.post(ORDERS, headers=auth(staff), json=body)
        assert response.status_code == 400
        assert response.json()["orders.0.channel"] == ["non-existent object"]
        assert response.json()["code"] == "invalid_import"
        # A customer's unknown channel is named as a field error, before anything is written.
        body["orders"][0]["customer"]["channel"] = 987654
        response = client.post(ORDERS, headers=auth(staff), json=body)
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_import"
        assert response.json()["orders.0.customer.channel"] == ["non-existent object"]

    def test_database_refusal_is_400_not_500(self, client: TestClient, staff: str) -> None:
        # Given an order whose customer is named by an id nobody imported
        body = import_body()
        body["orders"][0]["customer"] = next_id()
        response = client.post(ORDERS, headers=auth(staff), json=body)
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_import"
        assert response.json()["orders.0.customer"] == ["non-existent object"]

    def test_duplicate_order_number_is_400(self, client: TestClient, staff: str) -> None:
        body = import_body()
        assert client.post(ORDERS, headers=auth(staff), json=body).status_code == 201
        clash = copy.deepcopy(import_body())
        clash["orders"][0]["number"] = body["orders"][0]["number"]
        response = client.post(ORDERS, headers=auth(staff), json=clash)
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_import"
        assert response.json()["orders.0.number"] == ["order number already used by another order"]

    @pytest.mark.parametrize(
        "content",
        [
            b"{not json",
            b"[]",
            b'"orders"',
            b"\xff",
            b'{"orders": [{"id": NaN}]}',
            b'{"channels": [{"id": 1e400}]}',
        ],
    )
    def test_malformed_bodies_are_400_never_500(self, client: TestClient, staff: str, content: bytes) -> None:
        response = client.post(
            ORDERS, headers={**auth(staff), "Content-Type": "application/json"}, content=content
        )
        assert response.status_code == 400, response.text
        assert "code" in response.json()

    def test_nul_characters_are_refused(self, client: TestClient, staff: str) -> None:
        body = import_body()
        body["orders"][0]["items"][0]["product_name"] = "bad\x00name"
        response = client.post(ORDERS, headers=auth(staff), json=body)
        assert response.status_code == 400
        assert "orders.0.items.0.product_name" in response.json()

    def test_malformed_json_uses_the_drf_parse_error(self, client: TestClient, staff: str) -> None:
        response = client.post(
            ORDERS, headers={**auth(staff), "Content-Type": "application/json"}, content=b"{not json"
        )
        assert response.status_code == 400
        assert response.json()["code"] == "parse_error"
        assert response.json()["detail"].startswith("JSON parse error - ")


class TestAuth:
    def test_no_token_is_401(self, client: TestClient) -> None:
        response = client.post(ORDERS, json=import_body())
        assert response.status_code == 401
        assert response.json() == {
            "detail": "Authentication credentials were not provided.",
            "code": "not_authenticated",
        }
        assert response.headers["WWW-Authenticate"] == "Token"
        assert client.get(f"{ORDERS}1/").status_code == 401

    @pytest.mark.parametrize(
        "header",
        ["Token nope", "Token", "Token a b", "token nope"],
    )
    def test_bad_token_is_401(self, client: TestClient, header: str) -> None:
        response = client.post(ORDERS, headers={"Authorization": header}, json=import_body())
        assert response.status_code == 401
        assert response.json()["code"] == "authentication_failed"

    def test_other_schemes_are_not_credentials(self, client: TestClient, staff: str) -> None:
        for headers in ({"Authorization": f"Bearer {staff}"}, {"X-Shopify-Access-Token": staff}):
            response = client.post(ORDERS, headers=headers, json=import_body())
            assert response.status_code == 401
            assert response.json()["code"] == "not_authenticated"

    def test_invalid_body_without_token_is_401_first(self, client: TestClient) -> None:
        assert client.post(ORDERS, json={"orders": "x"}).status_code == 401

    def test_revoked_token_is_401(self, client: TestClient) -> None:
        from cancelflow.services.tokens import revoke

        name = f"api-{uuid.uuid4().hex[:8]}"
        key = token_key("staff", name=name)
        assert client.get(f"{ORDERS}{next_id()}/", headers=auth(key)).status_code == 404
        with transaction() as session:
            assert revoke(session, name)
        assert client.get(f"{ORDERS}{next_id()}/", headers=auth(key)).status_code == 401

    @pytest.mark.parametrize("kind", ["storefront", "fulfillment_service"])
    def test_non_staff_tokens_are_403(self, client: TestClient, kind: str) -> None:
        handle = None
        if kind == "fulfillment_service":
            body = import_body()
            handle = body["fulfillment_services"][0]["handle"]
            staff_key = make_token("staff")
            assert client.post(ORDERS, headers=auth(staff_key), json=body).status_code == 201
        key = make_token(kind, handle=handle)
        response = client.post(ORDERS, headers=auth(key), json=import_body())
        assert response.status_code == 403
        assert response.json()["code"] == "permission_denied"
        assert client.get(f"{ORDERS}1/", headers=auth(key)).status_code == 403


class TestApp:
    def test_health(self, client: TestClient) -> None:
        response = client.get("/healthz")
        assert response.status_code == 200
        assert response.json()["ok"] is True

    def test_openapi_documents_both_schemes_and_every_route(self, client: TestClient) -> None:
        response = client.get("/api/schema/")
        assert response.status_code == 200
        schema = response.json()
        schemes = schema["components"]["securitySchemes"]
        assert schemes["Token"] == {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": schemes["Token"]["description"],
        }
        assert schemes["ShopifyAccessToken"]["name"] == "X-Shopify-Access-Token"
        paths = schema["paths"]
        base = "/admin/api/{version}/fulfillment_orders/{fulfillment_order_id}"
        for path in (
            f"{base}/cancellation_request.json",
            f"{base}/cancellation_request/accept.json",
            f"{base}/cancellation_request/reject.json",
            f"{base}.json",
            "/admin/api/{version}/assigned_fulfillment_orders.json",
            "/api/v1/orders/",
            "/api/v1/orders/{order_id}/",
            "/healthz",
        ):
            assert path in paths, path
        fo_schema = schema["components"]["schemas"]["FulfillmentOrderOut"]
        assert list(fo_schema["properties"])[:3] == ["id", "shop_id", "order_id"]
        assert "outgoing_requests" in fo_schema["properties"]
        send = paths[f"{base}/cancellation_request.json"]["post"]
        assert send["security"] == [{"ShopifyAccessToken": []}]
        version = next(p for p in send["parameters"] if p["name"] == "version")
        assert "2021-07" in version["schema"]["enum"]
        assert paths["/api/v1/orders/"]["post"]["security"] == [{"Token": []}]

    def test_docs_page(self, client: TestClient) -> None:
        response = client.get("/api/docs/")
        assert response.status_code == 200
        assert "swagger" in response.text.lower()

    def test_unknown_routes_use_the_dialect_of_their_path(self, client: TestClient) -> None:
        assert client.get("/api/v1/nothing/").json() == {"detail": "Not found."}
        assert client.get("/admin/api/2021-07/nothing.json").json() == {"errors": "Not Found"}
        response = client.delete(ORDERS)
        assert response.status_code == 405
        assert response.json()["code"] == "method_not_allowed"
