"""A fulfillment app written for Shopify, against a running stack (API, real worker and beat, sandbox
gateway and fulfillment service): through Shopify's own Python client (`shopify.GraphQL()`) and the
`gql` client, for several API versions, with REST and GraphQL mixed on one fulfillment order."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import shopify
from gql import Client
from gql.graphql_request import GraphQLRequest
from gql.transport.httpx import HTTPXTransport

from tests.factories import token_key
from tests.harness import Stack, wait_for
from tests.workflow.conftest import (
    Service,
    make_order,
    make_service,
    money_rows,
    plan_for,
    request_row,
    stack,
    submit,
    wait_status,
)

__all__ = ["stack"]  # the module's running stack (tests/workflow/conftest.py)

Run = Callable[[str, dict[str, Any] | None], dict[str, Any]]

FO = "id status requestStatus orderId"
ANSWER = """mutation($id: ID!, $message: String) {
  fulfillmentOrder%sCancellationRequest(id: $id, message: $message) {
    fulfillmentOrder { id status requestStatus }
    userErrors { field message }
  }
}"""
SUBMIT = """mutation($id: ID!, $message: String) {
  fulfillmentOrderSubmitCancellationRequest(id: $id, message: $message) {
    fulfillmentOrder { id status requestStatus }
    userErrors { field message }
  }
}"""


def assigned_query(version: str) -> str:
    """What a service asks to find its pending cancellation requests, where `version` keeps it."""
    connection = (
        "assignedFulfillmentOrders(first: 50, assignmentStatus: CANCELLATION_REQUESTED) "
        f"{{ nodes {{ {FO} }} pageInfo {{ hasNextPage }} }}"
    )
    if version in ("2024-01", "2024-04"):
        return f"{{ shop {{ {connection} }} }}"
    return f"{{ {connection} }}"


@pytest.fixture
def shopify_client(stack: Stack) -> Iterator[Callable[[str, str], Run]]:
    """Shopify's Python client pointed at the stack (research section 7, option A)."""

    def client(version: str, token: str) -> Run:
        def run(query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
            shopify.ShopifyResource.site = f"{stack.api_url}/admin/api/{version}"
            shopify.ShopifyResource.get_headers()["X-Shopify-Access-Token"] = token
            body: dict[str, Any] = json.loads(shopify.GraphQL().execute(query, variables=variables))
            assert "errors" not in body, body
            return body

        return run

    yield client
    shopify.ShopifyResource.clear_session()


def gql_client(stack: Stack, version: str, token: str) -> Run:
    """The `gql` client: it reads the schema by introspection first, and checks every query against it."""
    transport = HTTPXTransport(
        url=f"{stack.api_url}/admin/api/{version}/graphql.json",
        headers={"X-Shopify-Access-Token": token},
        timeout=30,
    )
    client = Client(transport=transport, fetch_schema_from_transport=True)

    def run(query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = client.execute(GraphQLRequest(query, variable_values=variables))
        return {"data": result}

    return run


def gid(kind: str, ident: int) -> str:
    return f"gid://shopify/{kind}/{ident}"


def pending_for(run: Run, version: str, order_id: int) -> dict[str, Any]:
    """The service's pending cancellation request on `order_id`, found as a Shopify app finds it."""

    def find() -> dict[str, Any] | None:
        data = run(assigned_query(version), None)["data"]
        connection = data["shop" if version in ("2024-01", "2024-04") else "assignedFulfillmentOrders"]
        if "assignedFulfillmentOrders" in connection:
            connection = connection["assignedFulfillmentOrders"]
        found = [n for n in connection["nodes"] if n["orderId"] == gid("Order", order_id)]
        return found[0] if found else None

    node = wait_for(find, timeout=60, what=f"a pending cancellation request on order {order_id}")
    assert node["requestStatus"] == "CANCELLATION_REQUESTED"
    return node


def waiting_request(stack: Stack) -> tuple[Service, dict[str, Any], str]:
    """A customer's cancellation, routed to a service that pulls and leaves the answer to the test."""
    service = make_service(stack, policy="never")
    order = make_order(service)
    client_request_id = submit(order_item=order["items"][0]["id"])
    wait_status(client_request_id, "approved")
    return service, order, client_request_id


@pytest.mark.parametrize("version", ["2024-01", "2024-07", "2026-01", "unstable"])
def test_the_service_accepts_through_shopifys_client_and_the_refund_runs(
    stack: Stack, shopify_client: Callable[[str, str], Run], version: str
) -> None:
    service, order, client_request_id = waiting_request(stack)
    run = shopify_client(version, service.token)
    node = pending_for(run, version, order["id"])
    body = run(ANSWER % "Accept", {"id": node["id"], "message": "Not packed yet"})
    payload = body["data"]["fulfillmentOrderAcceptCancellationRequest"]
    assert payload["userErrors"] == []
    assert (payload["fulfillmentOrder"]["status"], payload["fulfillmentOrder"]["requestStatus"]) == (
        "CANCELLED",
        "CANCELLATION_ACCEPTED",
    )
    request = wait_status(client_request_id, "completed")
    assert money_rows(plan_for(request.id).id), "the refund ran"
    assert cost_of(body) >= 10  # a mutation costs 10


def cost_of(body: dict[str, Any]) -> int:
    return int(body["extensions"]["cost"]["actualQueryCost"])


@pytest.mark.parametrize("version", ["2024-04", "2025-10"])
def test_the_service_rejects_through_gql_and_the_request_is_rejected(stack: Stack, version: str) -> None:
    service, order, client_request_id = waiting_request(stack)
    run = gql_client(stack, version, service.token)
    node = pending_for(run, version, order["id"])
    payload = run(ANSWER % "Reject", {"id": node["id"], "message": "Already shipped product"})["data"][
        "fulfillmentOrderRejectCancellationRequest"
    ]
    assert payload["userErrors"] == []
    assert payload["fulfillmentOrder"]["requestStatus"] == "CANCELLATION_REJECTED"
    wait_status(client_request_id, "rejected")
    # Answering again the other way is a user error, not a change
    again = run(ANSWER % "Accept", {"id": node["id"], "message": None})["data"]
    assert again["fulfillmentOrderAcceptCancellationRequest"]["userErrors"][0]["field"] == ["id"]
    assert request_row(client_request_id).status.value == "rejected"


def test_a_graphql_send_is_answered_by_a_rest_service(
    stack: Stack, shopify_client: Callable[[str, str], Run]
) -> None:
    # Given a service that answers over REST as soon as it is notified (the sandbox, policy accept)
    service = make_service(stack, policy="accept")
    order = make_order(service)
    fo_id = order["fulfillment_orders"][0]["id"]
    # When the merchant sends the request over GraphQL
    staff = shopify_client("2026-01", token_key("staff"))
    sent = staff(SUBMIT, {"id": gid("FulfillmentOrder", fo_id), "message": "Customer cancelled their order"})
    payload = sent["data"]["fulfillmentOrderSubmitCancellationRequest"]
    assert payload["userErrors"] == []
    assert payload["fulfillmentOrder"]["requestStatus"] == "CANCELLATION_REQUESTED"
    # Then the worker notifies the service, which accepts over REST; GraphQL reads the outcome
    query = "query($id: ID!) { fulfillmentOrder(id: $id) { status requestStatus } }"
    wait_for(
        lambda: (
            staff(query, {"id": gid("FulfillmentOrder", fo_id)})["data"]["fulfillmentOrder"]
            == {"status": "CANCELLED", "requestStatus": "CANCELLATION_ACCEPTED"}
        ),
        timeout=60,
        what="the service's REST accept",
    )


def test_a_rest_send_is_answered_over_graphql(stack: Stack) -> None:
    service = make_service(stack, policy="never")
    order = make_order(service)
    fo_id = order["fulfillment_orders"][0]["id"]
    response = httpx.post(
        f"{stack.api_url}/admin/api/2021-07/fulfillment_orders/{fo_id}/cancellation_request.json",
        headers={"X-Shopify-Access-Token": token_key("staff")},
        json={"cancellation_request": {"message": "over REST"}},
    )
    assert response.status_code == 200, response.text
    run = gql_client(stack, "2026-01", service.token)
    node = pending_for(run, "2026-01", order["id"])
    payload = run(ANSWER % "Accept", {"id": node["id"], "message": "ok"})["data"]
    assert payload["fulfillmentOrderAcceptCancellationRequest"]["fulfillmentOrder"]["status"] == "CANCELLED"
    rest = httpx.get(
        f"{stack.api_url}/admin/api/2021-07/fulfillment_orders/{fo_id}.json",
        headers={"X-Shopify-Access-Token": service.token},
    ).json()["fulfillment_order"]
    assert (rest["request_status"], rest["merchant_requests"][0]["message"]) == (
        "cancellation_accepted",
        "over REST",
    )


def test_services_are_isolated(stack: Stack, shopify_client: Callable[[str, str], Run]) -> None:
    service, order, client_request_id = waiting_request(stack)
    intruder = make_service(stack, policy="never")
    node = pending_for(shopify_client("2026-01", service.token), "2026-01", order["id"])
    run = shopify_client("2026-01", intruder.token)
    listed = run(assigned_query("2026-01"))["data"]["assignedFulfillmentOrders"]["nodes"]
    assert node["id"] not in {n["id"] for n in listed}
    assert run("query($id: ID!) { fulfillmentOrder(id: $id) { id } }", {"id": node["id"]})["data"] == {
        "fulfillmentOrder": None
    }
    for decision in ("Accept", "Reject"):
        payload = run(ANSWER % decision, {"id": node["id"], "message": None})["data"]
        assert payload[f"fulfillmentOrder{decision}CancellationRequest"] == {
            "fulfillmentOrder": None,
            "userErrors": [{"field": ["id"], "message": "Fulfillment order does not exist."}],
        }
    assert request_row(client_request_id).status.value == "approved"


def test_a_bad_token_reaches_shopifys_client_as_a_401(stack: Stack) -> None:
    import urllib.error

    shopify.ShopifyResource.site = f"{stack.api_url}/admin/api/2026-01"
    shopify.ShopifyResource.get_headers()["X-Shopify-Access-Token"] = "not-a-token"
    try:
        with pytest.raises(urllib.error.HTTPError) as caught:
            shopify.GraphQL().execute("{ shop { name } }")
    finally:
        shopify.ShopifyResource.clear_session()
    assert caught.value.code == 401
