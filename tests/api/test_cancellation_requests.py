"""The Omnitron cancellation-request API: create, retrieve, list, update, approve, reject, idempotency,
who may do what, and IBAN masking."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cancelflow.db import transaction
from cancelflow.models import (
    CancellationPlan,
    CancellationRequest,
    Event,
    FulfillmentOrder,
    IdempotencyKey,
    OrderItem,
    WorkflowStep,
)
from cancelflow.models.enums import FORequestStatus, PlanStatus, StepKind, StepStatus
from cancelflow.services import routing, steps
from tests import factories
from tests.factories import VALID_IBAN, PlacedOrder, new_service, token_headers

BASE = "/api/v1/cancellation_requests/"


def channel_base(channel: int) -> str:
    return f"/api/v1/channel/{channel}/cancellation_requests/"


@pytest.fixture(scope="module")
def iban_staff(database: str) -> dict[str, str]:
    return token_headers("staff", permissions=["view_iban"])


@pytest.fixture(scope="module")
def storefront(database: str) -> dict[str, str]:
    return token_headers("storefront", channel_id=1)


def new_order(**kwargs: Any) -> PlacedOrder:
    """An order of channel 1 (unless told) with a service that accepted its fulfillment order."""
    return factories.new_order(service=new_service(), **kwargs)


def create(client: TestClient, headers: dict[str, str], order: PlacedOrder, **body: Any) -> Any:
    payload = {"order_item": order.item_id, "reason": 1, "quantity": 1, **body}
    response = client.post(BASE, headers=headers, json=payload)
    assert response.status_code == 201, response.text
    return response.json()


def requested(item_id: int) -> int:
    with transaction() as session:
        return session.get_one(OrderItem, item_id).requested_quantity


class TestCreateAndRead:
    def test_create_then_retrieve_list_and_detailed(self, client: TestClient, staff: dict[str, str]) -> None:
        order = new_order(method="bank_transfer")
        body = create(
            client, staff, order, iban=VALID_IBAN, holder_name="Bob Norman", description="changed my mind"
        )
        assert body["status"] == "waiting"
        assert body["order_item"] == order.item_id
        assert body["order"] == order.id
        assert body["quantity"] == 1
        assert body["iban"] != VALID_IBAN
        assert body["iban"].endswith(VALID_IBAN[-4:])
        assert body["easy_return"] is None
        got = client.get(f"{BASE}{body['id']}/", headers=staff)
        assert got.status_code == 200
        assert got.json() == body
        listed = client.get(BASE, headers=staff, params={"order": order.id}).json()
        assert listed["count"] == 1
        assert [r["id"] for r in listed["results"]] == [body["id"]]
        detailed = client.get(f"{BASE}{body['id']}/detailed/", headers=staff).json()
        assert detailed["order"]["number"] == order.order.number
        assert detailed["customer"]["email"] == order.customer.email
        assert detailed["order_item"]["sku"] == order.items[0].sku
        assert detailed["reason"]["id"] == 1
        assert detailed["plan"] is None
        assert requested(order.item_id) == 1

    def test_iban_shown_only_to_staff_with_view_iban(
        self, client: TestClient, staff: dict[str, str], iban_staff: dict[str, str]
    ) -> None:
        order = new_order(method="bank_transfer")
        body = create(client, staff, order, iban=VALID_IBAN, holder_name="Bob Norman")
        assert client.get(f"{BASE}{body['id']}/", headers=iban_staff).json()["iban"] == VALID_IBAN
        detailed = client.get(f"{BASE}{body['id']}/detailed/", headers=staff).json()
        assert detailed["iban"] != VALID_IBAN
        listed = client.get(f"{BASE}detailed/", headers=iban_staff, params={"pk": body["id"]}).json()
        assert listed["results"][0]["iban"] == VALID_IBAN

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"quantity": 3}, "quantity"),
            ({"iban": "DE00123", "holder_name": "x"}, "iban"),
            ({"order_item": 1}, "order_item"),
            ({"reason": 999999}, "reason"),
            ({"quantity": 0}, "quantity"),
            ({"cancellation_type": "explode"}, "cancellation_type"),
            ({"description": "a\x00b"}, "description"),
        ],
    )
    def test_bad_create_is_400_and_stores_nothing(
        self, client: TestClient, staff: dict[str, str], body: dict[str, Any], field: str
    ) -> None:
        order = new_order()
        payload = {"order_item": order.item_id, "reason": 1, "quantity": 1, **body}
        response = client.post(BASE, headers=staff, json=payload)
        assert response.status_code == 400, response.text
        assert field in response.json()
        assert "code" in response.json()
        with transaction() as session:
            assert not session.scalars(
                select(CancellationRequest).where(CancellationRequest.order_id == order.id)
            ).all()

    def test_bank_refund_without_account_is_400(self, client: TestClient, staff: dict[str, str]) -> None:
        order = new_order(method="cash_on_delivery")
        response = client.post(BASE, headers=staff, json={"order_item": order.item_id, "reason": 1})
        assert response.status_code == 400
        assert set(response.json()) >= {"iban", "holder_name", "code"}

    def test_unknown_id_is_404_and_missing_token_401(self, client: TestClient, staff: dict[str, str]) -> None:
        response = client.get(f"{BASE}{2**62}/", headers=staff)
        assert response.status_code == 404
        assert response.json() == {"detail": "Not found."}
        unauthenticated = client.get(BASE)
        assert unauthenticated.status_code == 401
        assert set(unauthenticated.json()) == {"detail", "code"}
        wrong = client.get(BASE, headers={"Authorization": "Token nope"})
        assert wrong.status_code == 401


class TestPagination:
    def test_pages_have_absolute_links(self, client: TestClient, staff: dict[str, str]) -> None:
        order = new_order(items=3, quantity=1)
        ids = [create(client, staff, order, order_item=item.id, quantity=1)["id"] for item in order.items]
        first = client.get(BASE, headers=staff, params={"order": order.id, "limit": 2}).json()
        assert first["count"] == 3
        assert [r["id"] for r in first["results"]] == sorted(ids, reverse=True)[:2]
        assert first["previous"] is None
        assert first["next"].startswith("/api/v1/cancellation_requests/?")  # no public base URL: a path
        second = client.get(first["next"], headers=staff).json()
        assert [r["id"] for r in second["results"]] == [min(ids)]
        assert second["next"] is None
        assert second["previous"].startswith("/api/v1/cancellation_requests/")
        assert "page=" not in second["previous"]
        beyond = client.get(BASE, headers=staff, params={"order": order.id, "page": 9})
        assert beyond.status_code == 404

    def test_links_carry_the_keyset_and_agree_with_page_numbers(
        self, client: TestClient, staff: dict[str, str]
    ) -> None:
        # Given 7 requests on one order, listed 2 to a page
        order = new_order(items=7, quantity=1)
        for item in order.items:
            create(client, staff, order, order_item=item.id, quantity=1)
        params = {"order": order.id, "limit": 2}
        by_number = [
            [r["id"] for r in client.get(BASE, headers=staff, params={**params, "page": n}).json()["results"]]
            for n in (1, 2, 3, 4)
        ]
        # When the next links are followed to the end
        pages, url = [], BASE + "?" + "&".join(f"{k}={v}" for k, v in params.items())
        bodies = []
        while url:
            body = client.get(url, headers=staff).json()
            bodies.append(body)
            pages.append([r["id"] for r in body["results"]])
            url = body["next"]
        # Then they name the page after the last row shown, and give the same pages as page numbers
        assert pages == by_number
        assert f"page_after={pages[0][-1]}" in bodies[0]["next"]
        assert "page=2" in bodies[0]["next"]
        # And the previous links walk back the same way, the one to page 1 without any keyset
        back, url = [], bodies[-1]["previous"]
        while url:
            body = client.get(url, headers=staff).json()
            back.append([r["id"] for r in body["results"]])
            assert body["count"] == 7
            url = body["previous"]
        assert back == by_number[-2::-1]
        assert "page_before" not in bodies[1]["previous"]
        assert f"page_before={pages[3][0]}" in bodies[3]["previous"]
        assert f"page_after={pages[2][-1]}" in client.get(bodies[3]["previous"], headers=staff).json()["next"]

    @pytest.mark.parametrize(
        "params",
        [{"page_after": "x"}, {"page_before": "0"}, {"page_after": "99999999999999999999"}],
    )
    def test_bad_keysets_are_400(
        self, client: TestClient, staff: dict[str, str], params: dict[str, str]
    ) -> None:
        response = client.get(BASE, headers=staff, params=params)
        assert response.status_code == 400
        assert set(response.json()) == {next(iter(params)), "code"}

    def test_both_keysets_at_once_are_400(self, client: TestClient, staff: dict[str, str]) -> None:
        response = client.get(BASE, headers=staff, params={"page_after": 5, "page_before": 3})
        assert response.status_code == 400
        assert response.json()["non_field_errors"] == ["Send page_after or page_before, not both."]

    @pytest.mark.parametrize("params", [{"page": "0"}, {"page": "x"}, {"limit": "-1"}, {"limit": "1e3"}])
    def test_bad_page_params_are_400(
        self, client: TestClient, staff: dict[str, str], params: dict[str, str]
    ) -> None:
        response = client.get(BASE, headers=staff, params=params)
        assert response.status_code == 400
        assert set(response.json()) == {next(iter(params)), "code"}

    def test_limit_is_capped(self, client: TestClient, staff: dict[str, str]) -> None:
        response = client.get(BASE, headers=staff, params={"limit": "100000"})
        assert response.status_code == 200
        assert len(response.json()["results"]) <= 1000


class TestIdempotency:
    def test_same_key_same_body_replays_one_row(self, client: TestClient, staff: dict[str, str]) -> None:
        order = new_order()
        key = {"Idempotency-Key": uuid.uuid4().hex}
        payload = {"order_item": order.item_id, "reason": 1, "quantity": 1}
        first = client.post(BASE, headers={**staff, **key}, json=payload)
        again = client.post(BASE, headers={**staff, **key}, json=payload)
        assert first.status_code == again.status_code == 201
        assert first.json() == again.json()
        other_body = client.post(BASE, headers={**staff, **key}, json={**payload, "quantity": 2})
        assert other_body.status_code == 422
        assert other_body.json()["code"] == "idempotency_key_reused"
        with transaction() as session:
            count = session.scalar(select(func.count()).where(CancellationRequest.order_id == order.id))
        assert count == 1
        assert requested(order.item_id) == 1

    def test_key_in_flight_is_409(self, client: TestClient, staff: dict[str, str]) -> None:
        order = new_order()
        payload = {"order_item": order.item_id, "reason": 1, "quantity": 1}
        key = uuid.uuid4().hex
        first = client.post(BASE, headers={**staff, "Idempotency-Key": key}, json=payload)
        assert first.status_code == 201
        with transaction() as session:
            row = session.scalars(select(IdempotencyKey).where(IdempotencyKey.key == key)).one()
            # Given another request with this token's key that has started and not finished
            session.add(
                IdempotencyKey(
                    token_id=row.token_id, key=key + "-b", scope=row.scope, request_hash=row.request_hash
                )
            )
        response = client.post(BASE, headers={**staff, "Idempotency-Key": key + "-b"}, json=payload)
        assert response.status_code == 409
        assert response.json()["code"] == "idempotency_key_in_flight"

    def test_failed_request_frees_its_key(self, client: TestClient, staff: dict[str, str]) -> None:
        order = new_order()
        key = {"Idempotency-Key": uuid.uuid4().hex}
        payload = {"order_item": order.item_id, "reason": 1, "quantity": 5}
        assert client.post(BASE, headers={**staff, **key}, json=payload).status_code == 400
        retry = client.post(BASE, headers={**staff, **key}, json={**payload, "quantity": 1})
        assert retry.status_code == 201

    def test_malformed_key_is_400(self, client: TestClient, staff: dict[str, str]) -> None:
        order = new_order()
        payload = {"order_item": order.item_id, "reason": 1}
        response = client.post(BASE, headers={**staff, "Idempotency-Key": "a b"}, json=payload)
        assert response.status_code == 400
        assert "Idempotency-Key" in response.json()


class TestUpdate:
    def test_patch_fields_while_waiting(self, client: TestClient, iban_staff: dict[str, str]) -> None:
        order = new_order(quantity=3)
        body = create(client, iban_staff, order)
        response = client.patch(
            f"{BASE}{body['id']}/",
            headers=iban_staff,
            json={
                "quantity": 3,
                "description": "new",
                "iban": "de89 3704 0044 0532 0130 00",
                "holder_name": "B",
            },
        )
        assert response.status_code == 200, response.text
        got = response.json()
        assert (got["quantity"], got["description"], got["iban"]) == (3, "new", VALID_IBAN)
        assert requested(order.item_id) == 3
        too_many = client.put(f"{BASE}{body['id']}/", headers=iban_staff, json={"quantity": 4})
        assert too_many.status_code == 400
        assert "quantity" in too_many.json()
        null = client.patch(f"{BASE}{body['id']}/", headers=iban_staff, json={"quantity": None})
        assert null.status_code == 400
        assert requested(order.item_id) == 3

    def test_approve_by_status_then_money_fields_are_frozen(
        self, client: TestClient, staff: dict[str, str]
    ) -> None:
        order = new_order()
        body = create(client, staff, order)
        approved = client.patch(f"{BASE}{body['id']}/", headers=staff, json={"status": "approved"})
        assert approved.status_code == 200, approved.text
        assert approved.json()["status"] == "approved"
        detailed = client.get(f"{BASE}{body['id']}/detailed/", headers=staff).json()
        assert detailed["plan"]["status"] == "waiting"
        assert [s["kind"] for s in detailed["plan"]["steps"]] == ["validate", "route"]
        for change in ({"quantity": 2}, {"fully_refund_as_loyalty_money": True}, {"status": "waiting"}):
            refused = client.patch(f"{BASE}{body['id']}/", headers=staff, json=change)
            assert refused.status_code == 400, change
            assert refused.json()["code"] == "invalid_transition"
            assert refused.json()["non_field_errors"]
        same = client.put(f"{BASE}{body['id']}/", headers=staff, json={"quantity": 1, "description": "ok"})
        assert same.status_code == 200
        assert same.json()["description"] == "ok"
        completed = client.patch(f"{BASE}{body['id']}/", headers=staff, json={"status": "completed"})
        assert completed.status_code == 400
        assert client.get(f"{BASE}{body['id']}/", headers=staff).json()["status"] == "approved"

    def test_echoing_the_masked_iban_changes_nothing(self, client: TestClient, staff: dict[str, str]) -> None:
        order = new_order(method="bank_transfer")
        body = create(client, staff, order, iban=VALID_IBAN, holder_name="Bob")
        response = client.patch(f"{BASE}{body['id']}/", headers=staff, json={"iban": body["iban"]})
        assert response.status_code == 200
        with transaction() as session:
            assert session.get_one(CancellationRequest, body["id"]).iban == VALID_IBAN


class TestReject:
    def test_reject_waiting_gives_quantity_back(self, client: TestClient, staff: dict[str, str]) -> None:
        order = new_order()
        body = create(client, staff, order)
        response = client.post(f"{BASE}{body['id']}/reject/", headers=staff)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "rejected"
        assert response.json()["rejection_code"] == "staff_rejected"
        assert requested(order.item_id) == 0
        again = client.post(f"{BASE}{body['id']}/reject/", headers=staff)
        assert again.status_code == 400
        assert again.json()["code"] == "invalid_transition"

    def test_reject_while_service_is_asked_withdraws_the_request(
        self, client: TestClient, staff: dict[str, str]
    ) -> None:
        order = new_order()
        body = create(client, staff, order)
        assert (
            client.patch(f"{BASE}{body['id']}/", headers=staff, json={"status": "approved"}).status_code
            == 200
        )
        # Given the plan was routed: the fulfillment service is asked to cancel
        with transaction() as session:
            step = session.scalars(
                select(WorkflowStep).where(
                    WorkflowStep.request_id == body["id"], WorkflowStep.kind == StepKind.route
                )
            ).one()
            routing.route_step(session, steps.claim(session, step.id, task="cancellations.route"))
        with transaction() as session:
            plan = session.scalars(
                select(CancellationPlan).where(CancellationPlan.request_id == body["id"])
            ).one()
            assert plan.status == PlanStatus.confirmation_waiting
            plan_id = plan.id

        response = client.post(f"{BASE}{body['id']}/reject/", headers=staff)

        assert response.status_code == 200, response.text
        with transaction() as session:
            assert session.get_one(CancellationPlan, plan_id).status == PlanStatus.rejected
            fo = session.scalars(
                select(FulfillmentOrder).where(FulfillmentOrder.cancellation_plan_id == plan_id)
            ).one()
            assert fo.request_status == FORequestStatus.cancellation_rejected
            withdrawn = session.scalars(
                select(Event).where(
                    Event.entity == "fulfillment_order",
                    Event.entity_id == fo.id,
                    Event.kind == "fulfillment_order.cancellation_withdrawn",
                )
            ).all()
            assert len(withdrawn) == 1
            open_steps = session.scalars(
                select(WorkflowStep).where(
                    WorkflowStep.request_id == body["id"], WorkflowStep.status == StepStatus.pending
                )
            ).all()
            assert open_steps == []
        assert requested(order.item_id) == 0


class TestWhoMayDoWhat:
    def test_storefront_creates_and_reads_its_channel_only(
        self, client: TestClient, staff: dict[str, str], storefront: dict[str, str]
    ) -> None:
        mine = new_order(channel=1)
        theirs = new_order(channel=2)
        created = client.post(
            channel_base(1), headers=storefront, json={"order_item": mine.item_id, "reason": 1}
        )
        assert created.status_code == 201, created.text
        other = create(client, staff, theirs)
        assert client.get(f"{BASE}{created.json()['id']}/", headers=storefront).status_code == 200
        assert client.get(f"{BASE}{other['id']}/", headers=storefront).status_code == 404
        assert client.get(f"{channel_base(1)}{other['id']}/", headers=storefront).status_code == 404
        assert client.get(channel_base(2), headers=storefront).status_code == 403
        listed = client.get(BASE, headers=storefront, params={"limit": 1000}).json()
        assert {r["channel"] for r in listed["results"]} == {1}
        wrong_channel = client.post(
            BASE, headers=storefront, json={"order_item": theirs.item_id, "reason": 1}
        )
        assert wrong_channel.status_code == 400
        rid = created.json()["id"]
        assert (
            client.patch(f"{BASE}{rid}/", headers=storefront, json={"status": "approved"}).status_code == 403
        )
        assert client.post(f"{BASE}{rid}/reject/", headers=storefront).status_code == 403

    def test_channel_route_for_staff_sees_that_channel(
        self, client: TestClient, staff: dict[str, str]
    ) -> None:
        order = new_order(channel=2)
        body = create(client, staff, order)
        assert client.get(f"{channel_base(2)}{body['id']}/", headers=staff).status_code == 200
        assert client.get(f"{channel_base(1)}{body['id']}/", headers=staff).status_code == 404
        assert client.post(f"{channel_base(1)}{body['id']}/reject/", headers=staff).status_code == 404
        rejected = client.post(f"{channel_base(2)}{body['id']}/reject/", headers=staff)
        assert rejected.json()["status"] == "rejected"

    def test_fulfillment_service_token_is_refused(self, client: TestClient) -> None:
        service = new_service()
        headers = token_headers("fulfillment_service", fulfillment_service_handle=service.handle)
        assert client.get(BASE, headers=headers).status_code == 403
