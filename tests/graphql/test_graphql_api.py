"""The GraphQL Admin endpoint over HTTP, in process, on a real database: transport, auth, every query,
the mutations' userErrors for every wrong state, paging, isolation and introspection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from cancelflow.api.errors import SHOPIFY_UNAUTHORIZED
from cancelflow.config import get_settings
from cancelflow.db import transaction
from cancelflow.graphql.versions import VERSIONS
from cancelflow.models import WorkflowStep
from cancelflow.models.enums import StepStatus
from cancelflow.services import after_commit
from tests.api import test_fulfillment_api as rest
from tests.api.test_fulfillment_api import Service, count_events, fo_row, make_fo, make_service, make_token

V = "2026-01"

FO_FIELDS = "id status requestStatus supportedActions { action }"

SUBMIT = """
mutation Submit($id: ID!, $message: String) {
  fulfillmentOrderSubmitCancellationRequest(id: $id, message: $message) {
    fulfillmentOrder { FIELDS merchantRequests(first: 10) { nodes { kind message } } }
    userErrors { field message }
  }
}
""".replace("FIELDS", FO_FIELDS)

ANSWER = """
mutation Answer($id: ID!, $message: String) {
  fulfillmentOrder%sCancellationRequest(id: $id, message: $message) {
    fulfillmentOrder { %s }
    userErrors { field message }
  }
}
"""

ASSIGNED = """
query Assigned($status: FulfillmentOrderAssignmentStatus, $first: Int, $after: String, $last: Int,
               $before: String, $reverse: Boolean, $locations: [ID!]) {
  assignedFulfillmentOrders(assignmentStatus: $status, first: $first, after: $after, last: $last,
                            before: $before, reverse: $reverse, locationIds: $locations) {
    edges { cursor node { id } }
    nodes { id }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""


def gid(fo_id: int) -> str:
    return f"gid://shopify/FulfillmentOrder/{fo_id}"


def post(
    client: TestClient,
    token: str | None,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    version: str = V,
) -> Any:
    headers = {"X-Shopify-Access-Token": token} if token is not None else {}
    return client.post(
        f"/admin/api/{version}/graphql.json",
        headers=headers,
        json={"query": query, "variables": variables, "operationName": None},
    )


def gql(
    client: TestClient, token: str, query: str, variables: dict[str, Any] | None = None, **kw: Any
) -> Any:
    response = post(client, token, query, variables, **kw)
    assert response.status_code == 200, response.text
    return response.json()


def submit(client: TestClient, staff: str, fo_id: int, message: str | None = None) -> dict[str, Any]:
    body = gql(client, staff, SUBMIT, {"id": gid(fo_id), "message": message})
    assert "errors" not in body, body
    payload: dict[str, Any] = body["data"]["fulfillmentOrderSubmitCancellationRequest"]
    return payload


def answer(
    client: TestClient, token: str, fo_id: int | str, decision: str, message: str | None = None
) -> Any:
    ident = gid(fo_id) if isinstance(fo_id, int) else fo_id
    body = gql(client, token, ANSWER % (decision.capitalize(), FO_FIELDS), {"id": ident, "message": message})
    return body


@pytest.fixture(scope="module", autouse=True)
def _cancel_left_over_notifications(database: str) -> Iterator[None]:
    """No worker runs here: retire the notify steps these tests made, so a later worker skips them."""
    yield
    if rest._created_fos:
        with transaction() as session:
            session.execute(
                update(WorkflowStep)
                .where(
                    WorkflowStep.fulfillment_order_id.in_(rest._created_fos),
                    WorkflowStep.status == StepStatus.pending,
                )
                .values(status=StepStatus.cancelled)
            )


@pytest.fixture(scope="module", autouse=True)
def _roomy_cost_bucket(database: str) -> Iterator[None]:
    """These tests ask much of one token in a few seconds: a bucket that never throttles them (the
    throttling has its own tests, with Shopify's figures)."""
    settings = get_settings()
    before = settings.graphql_bucket_size
    settings.graphql_bucket_size = 10**9
    yield
    settings.graphql_bucket_size = before


@pytest.fixture(scope="module")
def staff(database: str) -> str:
    return make_token("staff")


@pytest.fixture(scope="module")
def service(database: str) -> Service:
    return make_service()


@pytest.fixture(scope="module")
def other_service(database: str) -> Service:
    return make_service()


class TestTransport:
    @pytest.mark.parametrize("version", VERSIONS)
    def test_every_version_answers_and_says_which(self, client: TestClient, staff: str, version: str) -> None:
        response = client.post(
            f"/admin/api/{version}/graphql.json",
            headers={"X-Shopify-Access-Token": staff},
            json={"query": "{ shop { name id } }", "variables": None, "operationName": None},
        )
        assert response.status_code == 200, response.text
        assert response.json()["data"] == {"shop": {"name": "cancelflow", "id": "gid://shopify/Shop/1"}}
        assert response.headers["X-Shopify-API-Version"] == version

    @pytest.mark.parametrize("version", ["2023-10", "2024-02", "2027-04", "latest", "2021-07"])
    def test_unknown_version_is_not_found(self, client: TestClient, staff: str, version: str) -> None:
        response = post(client, staff, "{ shop { name } }", version=version)
        assert response.status_code == 404
        assert response.json() == {"errors": "Not Found"}

    @pytest.mark.parametrize("token", [None, "", "not-a-token"])
    def test_missing_or_unknown_token_is_the_rest_401(self, client: TestClient, token: str | None) -> None:
        response = post(client, token, "{ shop { name } }")
        assert response.status_code == 401
        assert response.json() == {"errors": SHOPIFY_UNAUTHORIZED}

    def test_storefront_token_is_forbidden(self, client: TestClient) -> None:
        response = post(client, make_token("storefront"), "{ shop { name } }")
        assert response.status_code == 403
        assert isinstance(response.json()["errors"], str)

    @pytest.mark.parametrize(
        "content",
        [b"", b"{}", b"[]", b'{"query": null}', b'{"query": 3}', b'{"query": "  "}', b'"q"'],
    )
    def test_a_body_without_a_query_is_400(self, client: TestClient, staff: str, content: bytes) -> None:
        response = client.post(
            f"/admin/api/{V}/graphql.json",
            headers={"X-Shopify-Access-Token": staff, "Content-Type": "application/json"},
            content=content,
        )
        assert response.status_code == 400
        assert response.json() == {"errors": {"query": "Required parameter missing or invalid"}}

    @pytest.mark.parametrize(
        "content",
        [
            b'{"query": "{ shop { name } }", "variables": [1]}',
            b'{"query": "{ shop { name } }", "operationName": 1}',
            b"{not json",
            b"\xff\xfe",
        ],
    )
    def test_malformed_bodies_are_400(self, client: TestClient, staff: str, content: bytes) -> None:
        response = client.post(
            f"/admin/api/{V}/graphql.json",
            headers={"X-Shopify-Access-Token": staff, "Content-Type": "application/json"},
            content=content,
        )
        assert response.status_code == 400
        assert "errors" in response.json()

    def test_the_body_may_leave_out_variables_and_operation_name(
        self, client: TestClient, staff: str
    ) -> None:
        response = client.post(
            f"/admin/api/{V}/graphql.json",
            headers={"X-Shopify-Access-Token": staff},
            json={"query": "{ shop { name } }"},
        )
        assert response.json()["data"] == {"shop": {"name": "cancelflow"}}

    def test_syntax_and_validation_errors_have_no_data(self, client: TestClient, staff: str) -> None:
        syntax = gql(client, staff, "{ shop { name }")
        assert "data" not in syntax
        assert syntax["errors"][0]["locations"] == [{"line": 1, "column": 16}]
        invalid = gql(client, staff, "{ shop { nope } }")
        assert "data" not in invalid
        assert "nope" in invalid["errors"][0]["message"]
        for refused in (syntax, invalid):  # the cost extension is on every answer; a refused document costs 0
            assert refused["extensions"]["cost"]["requestedQueryCost"] == 0
            assert refused["extensions"]["cost"]["actualQueryCost"] is None
            bucket = refused["extensions"]["cost"]["throttleStatus"]
            assert 0 < bucket["currentlyAvailable"] <= bucket["maximumAvailable"]

    def test_operation_name_picks_the_operation(self, client: TestClient, staff: str) -> None:
        response = client.post(
            f"/admin/api/{V}/graphql.json",
            headers={"X-Shopify-Access-Token": staff},
            json={"query": "query A { shop { name } } query B { shop { id } }", "operationName": "B"},
        )
        assert response.json()["data"] == {"shop": {"id": "gid://shopify/Shop/1"}}


class TestMutations:
    def test_submit_accept_and_its_duplicate(self, client: TestClient, staff: str, service: Service) -> None:
        fo_id, _ = make_fo(service)
        sent = submit(client, staff, fo_id, "customer changed their mind")
        assert sent["userErrors"] == []
        fo = sent["fulfillmentOrder"]
        assert (fo["id"], fo["status"], fo["requestStatus"]) == (
            gid(fo_id),
            "IN_PROGRESS",
            "CANCELLATION_REQUESTED",
        )
        assert fo["merchantRequests"]["nodes"] == [
            {"kind": "CANCELLATION_REQUEST", "message": "customer changed their mind"}
        ]
        body = answer(client, service.token, fo_id, "accept", "Fragile")
        payload = body["data"]["fulfillmentOrderAcceptCancellationRequest"]
        assert payload["userErrors"] == []
        assert (payload["fulfillmentOrder"]["status"], payload["fulfillmentOrder"]["requestStatus"]) == (
            "CANCELLED",
            "CANCELLATION_ACCEPTED",
        )
        again = answer(client, service.token, fo_id, "accept", "Fragile")
        assert again["data"]["fulfillmentOrderAcceptCancellationRequest"]["userErrors"] == []
        assert count_events(fo_id, "fulfillment_order.cancellation_accepted") == 1
        assert count_events(fo_id, "reply.duplicate") == 1

    def test_submit_notifies_the_service_after_commit(
        self, client: TestClient, staff: str, service: Service, sent: list[after_commit.Send]
    ) -> None:
        fo_id, _ = make_fo(service)
        submit(client, staff, fo_id)
        assert [s.task for s in sent] == ["fulfillment.notify"]

    def test_reject_keeps_it_in_progress_and_it_can_be_asked_again(
        self, client: TestClient, staff: str, service: Service
    ) -> None:
        fo_id, _ = make_fo(service)
        submit(client, staff, fo_id)
        body = answer(client, service.token, fo_id, "reject", "Already shipped product")
        fo = body["data"]["fulfillmentOrderRejectCancellationRequest"]["fulfillmentOrder"]
        assert (fo["status"], fo["requestStatus"]) == ("IN_PROGRESS", "CANCELLATION_REJECTED")
        again = submit(client, staff, fo_id, "please")
        assert again["userErrors"] == []
        assert len(again["fulfillmentOrder"]["merchantRequests"]["nodes"]) == 2

    @pytest.mark.parametrize(
        ("request_status", "status"),
        [
            ("unsubmitted", "open"),
            ("submitted", "open"),
            ("rejected", "open"),
            ("cancellation_requested", "in_progress"),
            ("cancellation_accepted", "cancelled"),
            ("closed", "closed"),
        ],
    )
    def test_submit_in_a_wrong_state_is_a_user_error_and_changes_nothing(
        self,
        client: TestClient,
        staff: str,
        service: Service,
        sent: list[after_commit.Send],
        request_status: str,
        status: str,
    ) -> None:
        fo_id, _ = make_fo(service, request_status=request_status, status=status)
        payload = submit(client, staff, fo_id)
        assert payload["fulfillmentOrder"] is None
        [error] = payload["userErrors"]
        assert error["field"] == ["id"]
        assert "not in a state to request cancellation" in error["message"]
        fo = fo_row(fo_id)
        assert (fo.request_status.value, fo.status.value) == (request_status, status)
        assert sent == []

    def test_submit_to_a_merchant_managed_order_is_a_user_error(self, client: TestClient, staff: str) -> None:
        fo_id, _ = make_fo(None)
        payload = submit(client, staff, fo_id)
        assert payload["userErrors"] == [
            {"field": ["id"], "message": "Fulfillment order is not assigned to a fulfillment service."}
        ]

    @pytest.mark.parametrize(
        ("request_status", "status"),
        [
            ("accepted", "in_progress"),
            ("submitted", "open"),
            ("unsubmitted", "open"),
            ("closed", "closed"),
        ],
    )
    @pytest.mark.parametrize("decision", ["accept", "reject"])
    def test_answer_without_a_pending_request_is_a_user_error_and_is_recorded(
        self, client: TestClient, service: Service, decision: str, request_status: str, status: str
    ) -> None:
        fo_id, _ = make_fo(service, request_status=request_status, status=status)
        body = answer(client, service.token, fo_id, decision, "nothing to answer")
        payload = body["data"][f"fulfillmentOrder{decision.capitalize()}CancellationRequest"]
        assert payload == {
            "fulfillmentOrder": None,
            "userErrors": [
                {
                    "field": ["id"],
                    "message": "Fulfillment order does not have a pending cancellation request.",
                }
            ],
        }
        assert "errors" not in body
        fo = fo_row(fo_id)
        assert (fo.request_status.value, fo.status.value) == (request_status, status)
        assert count_events(fo_id, "reply.ignored") == 1

    def test_the_contrary_answer_after_an_accept_is_a_user_error(
        self, client: TestClient, staff: str, service: Service
    ) -> None:
        fo_id, _ = make_fo(service)
        submit(client, staff, fo_id)
        answer(client, service.token, fo_id, "accept")
        body = answer(client, service.token, fo_id, "reject")
        assert body["data"]["fulfillmentOrderRejectCancellationRequest"]["userErrors"][0]["field"] == ["id"]
        assert fo_row(fo_id).status.value == "cancelled"

    @pytest.mark.parametrize(
        "bad_id",
        [
            "gid://shopify/FulfillmentOrder/999999999999",
            "gid://shopify/Order/1",
            "gid://shopify/FulfillmentOrder/abc",
            "gid://shopify/FulfillmentOrder/0",
            f"gid://shopify/FulfillmentOrder/{2**63}",
            "12",
            "",
        ],
    )
    def test_unknown_ids_are_user_errors(
        self, client: TestClient, staff: str, service: Service, bad_id: str
    ) -> None:
        expected = {
            "fulfillmentOrder": None,
            "userErrors": [{"field": ["id"], "message": "Fulfillment order does not exist."}],
        }
        sent = gql(client, staff, SUBMIT, {"id": bad_id})
        assert sent["data"] == {"fulfillmentOrderSubmitCancellationRequest": expected}
        for decision in ("Accept", "Reject"):
            body = gql(client, service.token, ANSWER % (decision, FO_FIELDS), {"id": bad_id})
            assert body["data"] == {f"fulfillmentOrder{decision}CancellationRequest": expected}
            assert "errors" not in body

    def test_another_services_order_is_an_unknown_id(
        self, client: TestClient, staff: str, service: Service, other_service: Service
    ) -> None:
        fo_id, _ = make_fo(service)
        submit(client, staff, fo_id)
        for decision in ("accept", "reject"):
            body = answer(client, other_service.token, fo_id, decision)
            payload = body["data"][f"fulfillmentOrder{decision.capitalize()}CancellationRequest"]
            assert payload["userErrors"] == [
                {"field": ["id"], "message": "Fulfillment order does not exist."}
            ]
        assert fo_row(fo_id).request_status.value == "cancellation_requested"

    def test_the_wrong_kind_of_token_is_access_denied(
        self, client: TestClient, staff: str, service: Service
    ) -> None:
        fo_id, _ = make_fo(service)
        body = gql(client, service.token, SUBMIT, {"id": gid(fo_id)})
        assert body["data"] == {"fulfillmentOrderSubmitCancellationRequest": None}
        [error] = body["errors"]
        assert error["extensions"]["code"] == "ACCESS_DENIED"
        assert error["path"] == ["fulfillmentOrderSubmitCancellationRequest"]
        submit(client, staff, fo_id)
        body = answer(client, staff, fo_id, "accept")
        assert body["errors"][0]["extensions"]["code"] == "ACCESS_DENIED"
        assert fo_row(fo_id).request_status.value == "cancellation_requested"

    def test_mutations_in_one_document_run_in_order(
        self, client: TestClient, staff: str, service: Service
    ) -> None:
        good, _ = make_fo(service)
        bad, _ = make_fo(service, request_status="unsubmitted", status="open")
        body = gql(
            client,
            staff,
            """mutation($a: ID!, $b: ID!) {
              a: fulfillmentOrderSubmitCancellationRequest(id: $a) { userErrors { field } }
              b: fulfillmentOrderSubmitCancellationRequest(id: $b) { userErrors { field } }
            }""",
            {"a": gid(good), "b": gid(bad)},
        )
        assert body["data"] == {"a": {"userErrors": []}, "b": {"userErrors": [{"field": ["id"]}]}}
        assert fo_row(good).request_status.value == "cancellation_requested"


class TestMixedWithRest:
    def test_a_rest_send_answered_over_graphql(
        self, client: TestClient, staff: str, service: Service
    ) -> None:
        fo_id, _ = make_fo(service)
        response = client.post(
            rest.url(f"fulfillment_orders/{fo_id}/cancellation_request.json"),
            headers=rest.auth(staff),
            json=rest.message("over REST"),
        )
        assert response.status_code == 200
        body = answer(client, service.token, fo_id, "accept")
        assert (
            body["data"]["fulfillmentOrderAcceptCancellationRequest"]["fulfillmentOrder"]["status"]
            == "CANCELLED"
        )

    def test_a_graphql_send_answered_over_rest(
        self, client: TestClient, staff: str, service: Service
    ) -> None:
        fo_id, _ = make_fo(service)
        submit(client, staff, fo_id, "over GraphQL")
        response = client.post(
            rest.url(f"fulfillment_orders/{fo_id}/cancellation_request/reject.json"),
            headers=rest.auth(service.token),
        )
        assert response.status_code == 200
        assert response.json()["fulfillment_order"]["request_status"] == "cancellation_rejected"
        assert response.json()["fulfillment_order"]["merchant_requests"][0]["message"] == "over GraphQL"


@pytest.fixture(scope="module")
def world(database: str, staff: str) -> dict[str, Any]:
    """Two services with fulfillment orders in several states."""
    mine = make_service()
    theirs = make_service()
    made: dict[str, list[int]] = {"requested": [], "accepted": [], "their_fos": []}
    for _ in range(5):
        made["requested"].append(make_fo(mine, request_status="cancellation_requested")[0])
    for _ in range(2):
        made["accepted"].append(make_fo(mine)[0])
    made["their_fos"].append(make_fo(theirs, request_status="cancellation_requested")[0])
    made["unsubmitted"] = [make_fo(mine, request_status="unsubmitted", status="open")[0]]
    made["cancelled"] = [make_fo(mine, request_status="cancellation_accepted", status="cancelled")[0]]
    return {"mine": mine, "theirs": theirs, **made}


def ids(connection: dict[str, Any]) -> list[int]:
    return [int(n["id"].rsplit("/", 1)[1]) for n in connection["nodes"]]


class TestQueries:
    def assigned(self, client: TestClient, token: str, **variables: Any) -> dict[str, Any]:
        variables.setdefault("first", 50)
        body = gql(client, token, ASSIGNED, variables)
        assert "errors" not in body, body
        connection: dict[str, Any] = body["data"]["assignedFulfillmentOrders"]
        assert [e["node"] for e in connection["edges"]] == connection["nodes"]
        return connection

    def test_filters_by_assignment_status_and_service(
        self, client: TestClient, world: dict[str, Any]
    ) -> None:
        token = world["mine"].token
        assert ids(self.assigned(client, token, status="CANCELLATION_REQUESTED")) == world["requested"]
        assert ids(self.assigned(client, token, status="FULFILLMENT_ACCEPTED")) == world["accepted"]
        assert ids(self.assigned(client, token, status="FULFILLMENT_UNSUBMITTED")) == world["unsubmitted"]
        everything = ids(self.assigned(client, token))
        assert everything == sorted(world["requested"] + world["accepted"] + world["unsubmitted"])
        assert (
            ids(self.assigned(client, world["theirs"].token, status="CANCELLATION_REQUESTED"))
            == world["their_fos"]
        )

    def test_staff_see_every_service(self, client: TestClient, staff: str, world: dict[str, Any]) -> None:
        seen = set(ids(self.assigned(client, staff, status="CANCELLATION_REQUESTED", first=250)))
        assert set(world["requested"] + world["their_fos"]) <= seen

    def test_location_filter(self, client: TestClient, world: dict[str, Any]) -> None:
        location = f"gid://shopify/Location/{world['mine'].location_id}"
        assert ids(self.assigned(client, world["mine"].token, locations=[location])) == ids(
            self.assigned(client, world["mine"].token)
        )
        assert ids(self.assigned(client, world["mine"].token, locations=["gid://shopify/Location/1"])) == []

    def test_pages_forward_and_back(self, client: TestClient, world: dict[str, Any]) -> None:
        token, want = world["mine"].token, world["requested"]
        seen: list[int] = []
        after = None
        while True:
            page = self.assigned(client, token, status="CANCELLATION_REQUESTED", first=2, after=after)
            seen += ids(page)
            assert page["pageInfo"]["hasPreviousPage"] is (after is not None)
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
        assert seen == want
        back: list[int] = []
        before = None
        while True:
            page = self.assigned(
                client, token, status="CANCELLATION_REQUESTED", first=None, last=2, before=before
            )
            back = ids(page) + back
            if not page["pageInfo"]["hasPreviousPage"]:
                break
            before = page["pageInfo"]["startCursor"]
        assert back == want
        reverse = self.assigned(client, token, status="CANCELLATION_REQUESTED", reverse=True)
        assert ids(reverse) == want[::-1]

    @pytest.mark.parametrize("version", ["2024-07", "2025-01", "unstable"])
    def test_updated_at_sort_pages_too(self, client: TestClient, world: dict[str, Any], version: str) -> None:
        query = """query($after: String) { assignedFulfillmentOrders(first: 3, after: $after,
                     assignmentStatus: CANCELLATION_REQUESTED, sortKey: UPDATED_AT) {
                     nodes { id updatedAt } pageInfo { hasNextPage endCursor } } }"""
        seen: list[int] = []
        after = None
        while True:
            page = gql(client, world["mine"].token, query, {"after": after}, version=version)["data"][
                "assignedFulfillmentOrders"
            ]
            seen += ids(page)
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
        assert sorted(seen) == world["requested"]

    @pytest.mark.parametrize(
        ("variables", "code"),
        [
            ({"first": None}, "MISSING_PAGE_SIZE"),
            ({"first": 251}, "MAX_PAGE_SIZE_EXCEEDED"),
            ({"first": -1}, "INVALID_PAGE_SIZE"),
            ({"first": "x"}, "INVALID_VARIABLE"),
            ({"first": 1, "after": "bm9wZQ"}, "BAD_USER_INPUT"),
            ({"first": 1, "after": "%%%"}, "BAD_USER_INPUT"),
            ({"first": 1, "locations": ["gid://shopify/Order/1"]}, "BAD_USER_INPUT"),
            (
                {"first": 1, "locations": [f"gid://shopify/Location/{i}" for i in range(1, 252)]},
                "MAX_INPUT_SIZE_EXCEEDED",
            ),
        ],
    )
    def test_bad_paging_arguments_are_errors_not_500s(
        self, client: TestClient, world: dict[str, Any], variables: dict[str, Any], code: str
    ) -> None:
        body = gql(client, world["mine"].token, ASSIGNED, variables)
        # Refused before running (no data) by the query limits, or by the connection once running.
        assert body.get("data") is None
        assert body["errors"][0]["extensions"]["code"] == code
        assert "cost" in body["extensions"]

    def test_a_cursor_of_another_sort_key_is_refused(self, client: TestClient, world: dict[str, Any]) -> None:
        page = self.assigned(client, world["mine"].token, first=1)
        body = gql(
            client,
            world["mine"].token,
            "query($a: String) { assignedFulfillmentOrders(first: 1, after: $a, sortKey: UPDATED_AT) { nodes { id } } }",
            {"a": page["pageInfo"]["endCursor"]},
        )
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"

    def test_before_2024_07_the_connection_is_on_shop(
        self, client: TestClient, world: dict[str, Any]
    ) -> None:
        on_root = gql(client, world["mine"].token, ASSIGNED, {"first": 5}, version="2024-01")
        assert "data" not in on_root
        assert "assignedFulfillmentOrders" in on_root["errors"][0]["message"]
        body = gql(
            client,
            world["mine"].token,
            "{ shop { assignedFulfillmentOrders(first: 50, assignmentStatus: CANCELLATION_REQUESTED) { nodes { id } } } }",
            version="2024-01",
        )
        assert ids(body["data"]["shop"]["assignedFulfillmentOrders"]) == world["requested"]

    def test_fulfillment_order_node_and_nodes(
        self, client: TestClient, world: dict[str, Any], staff: str
    ) -> None:
        mine, theirs = world["requested"][0], world["their_fos"][0]
        token = world["mine"].token
        query = """query($id: ID!, $ids: [ID!]!) {
            fulfillmentOrder(id: $id) { id }
            node(id: $id) { __typename ... on FulfillmentOrder { id requestStatus } }
            nodes(ids: $ids) { ... on FulfillmentOrder { id } }
        }"""
        body = gql(
            client,
            token,
            query,
            {"id": gid(mine), "ids": [gid(theirs), gid(mine), "gid://shopify/Shop/1", gid(mine)]},
        )
        assert body["data"] == {
            "fulfillmentOrder": {"id": gid(mine)},
            "node": {
                "__typename": "FulfillmentOrder",
                "id": gid(mine),
                "requestStatus": "CANCELLATION_REQUESTED",
            },
            "nodes": [None, {"id": gid(mine)}, None, {"id": gid(mine)}],
        }
        hidden = gql(client, token, query, {"id": gid(theirs), "ids": []})
        assert hidden["data"] == {"fulfillmentOrder": None, "node": None, "nodes": []}
        as_staff = gql(client, staff, query, {"id": gid(theirs), "ids": [gid(theirs)]})
        assert as_staff["data"]["nodes"] == [{"id": gid(theirs)}]

    def test_a_fulfillment_order_in_full(self, client: TestClient, world: dict[str, Any], staff: str) -> None:
        fo_id = world["accepted"][0]
        submit(client, staff, fo_id, "why")
        query = """query($id: ID!) { fulfillmentOrder(id: $id) {
            id status requestStatus createdAt updatedAt fulfillAt fulfillBy channelId orderId orderName
            orderProcessedAt order { id name } supportedActions { action externalUrl }
            destination { id address1 city firstName lastName zip email }
            assignedLocation { name city location { id name } }
            lineItems(first: 10) { edges { cursor node { id sku productTitle totalQuantity remainingQuantity
                requiresShipping lineItem { id sku quantity } } } pageInfo { hasNextPage } }
            merchantRequests(first: 5, kind: CANCELLATION_REQUEST) { nodes { id kind message sentAt
                requestOptions responseData fulfillmentOrder { id } } }
        } }"""
        fo = gql(client, world["mine"].token, query, {"id": gid(fo_id)})["data"]["fulfillmentOrder"]
        row = fo_row(fo_id)
        assert fo["requestStatus"] == "CANCELLATION_REQUESTED"
        assert fo["orderId"] == f"gid://shopify/Order/{row.order_id}" == fo["order"]["id"]
        assert (
            fo["assignedLocation"]["location"]["id"] == f"gid://shopify/Location/{world['mine'].location_id}"
        )
        assert fo["createdAt"].endswith("Z")
        assert {a["action"] for a in fo["supportedActions"]} <= {
            "CANCEL_FULFILLMENT_ORDER",
            "CREATE_FULFILLMENT",
            "REQUEST_CANCELLATION",
        }
        [line] = [e["node"] for e in fo["lineItems"]["edges"]]
        assert line["totalQuantity"] == 1
        assert line["requiresShipping"] is True
        [request] = fo["merchantRequests"]["nodes"]
        assert (request["kind"], request["message"], request["responseData"]) == (
            "CANCELLATION_REQUEST",
            "why",
            None,
        )
        assert request["fulfillmentOrder"] == {"id": gid(fo_id)}
        answer(client, world["mine"].token, fo_id, "reject", "shipped")
        answered = gql(client, world["mine"].token, query, {"id": gid(fo_id)})["data"]["fulfillmentOrder"]
        response = answered["merchantRequests"]["nodes"][0]["responseData"]
        assert (response["response"], response["message"]) == ("rejected", "shipped")


class TestIntrospection:
    @pytest.mark.parametrize("version", ["2024-01", "2024-04", "2024-07", "2025-10", "unstable"])
    def test_introspection_shows_the_versions_differences(
        self, client: TestClient, staff: str, version: str
    ) -> None:
        query = """{ __schema { queryType { name } mutationType { name } }
            root: __type(name: "QueryRoot") { fields { name } }
            shop: __type(name: "Shop") { fields(includeDeprecated: true) { name isDeprecated } }
            status: __type(name: "FulfillmentOrderAssignmentStatus") { enumValues { name } }
            sort: __type(name: "FulfillmentOrderSortKeys") { enumValues { name } } }"""
        data = gql(client, staff, query, version=version)["data"]
        assert data["__schema"] == {"queryType": {"name": "QueryRoot"}, "mutationType": {"name": "Mutation"}}
        on_root = "assignedFulfillmentOrders" in {f["name"] for f in data["root"]["fields"]}
        shop = {f["name"]: f["isDeprecated"] for f in data["shop"]["fields"]}
        statuses = {v["name"] for v in data["status"]["enumValues"]}
        sort_keys = [v["name"] for v in data["sort"]["enumValues"]]
        late = version >= "2024-07"
        assert on_root is late
        assert shop["assignedFulfillmentOrders"] is late
        assert ("FULFILLMENT_UNSUBMITTED" in statuses) is (version >= "2024-04")
        assert (
            sort_keys
            == {
                "2024-01": ["ID", "RELEVANCE"],
                "2024-04": ["ID", "RELEVANCE", "UPDATED_AT"],
                "2024-07": ["ID", "RELEVANCE", "UPDATED_AT"],
                "2025-10": ["ID", "UPDATED_AT"],
                "unstable": ["ID", "UPDATED_AT"],
            }[version]
        )

    def test_full_introspection_query_of_every_version(self, client: TestClient, staff: str) -> None:
        from graphql import build_client_schema, get_introspection_query, print_schema

        from cancelflow.graphql.schema import SCHEMAS

        for version in VERSIONS:
            body = gql(client, staff, get_introspection_query(descriptions=True), version=version)
            assert "errors" not in body
            assert print_schema(build_client_schema(body["data"])) == print_schema(SCHEMAS[version])
