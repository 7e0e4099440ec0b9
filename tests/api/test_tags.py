"""Tags on cancellation requests over HTTP: one request, lists by tag, bulk (synchronous path), EXPLAIN."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from cancelflow.db import transaction
from tests.factories import new_order, token_headers

BASE = "/api/v1/cancellation_requests/"


def make_requests(
    n: int, *, status: str = "waiting", email: str | None = None, channel: int = 1
) -> list[int]:
    """n requests on one fresh order, inserted set-based (the list and tag code only reads them)."""
    order = new_order(email=email, channel=channel, quantity=5)
    item = order.item_id
    with transaction() as session:
        rows = session.execute(
            text(
                "INSERT INTO cancellation_requests (uuid, order_item_id, order_id, channel_id, reason_id, "
                "cancellation_type, status, quantity, fully_refund_as_loyalty_money, attributes, version) "
                "SELECT gen_random_uuid(), :item, :order, :channel, 1, 'cancel', :status, 1, false, '{}', 1 "
                "FROM generate_series(1, :n) RETURNING id"
            ),
            {"item": item, "order": order.id, "channel": channel, "status": status, "n": n},
        )
        return sorted(int(r[0]) for r in rows)


def tags_in_db(request_id: int) -> list[str]:
    with transaction() as session:
        return list(
            session.scalars(
                text(
                    "SELECT t.key FROM cancellation_request_tags crt JOIN tags t ON t.id = crt.tag_id "
                    "WHERE crt.request_id = :id ORDER BY t.key"
                ),
                {"id": request_id},
            )
        )


def tagged_ids(key: str) -> set[int]:
    with transaction() as session:
        return set(
            session.scalars(
                text(
                    "SELECT crt.request_id FROM cancellation_request_tags crt JOIN tags t ON t.id = crt.tag_id "
                    "WHERE t.key = :key"
                ),
                {"key": key},
            )
        )


def unique(prefix: str = "tag") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def auth(database: str) -> dict[str, str]:
    return token_headers("staff")


class TestOneRequest:
    def test_add_list_remove(self, client: TestClient, auth: dict[str, str]) -> None:
        (rid,) = make_requests(1)
        a, b, c = unique("a"), unique("B"), unique("c")
        assert client.get(f"{BASE}{rid}/tags/", headers=auth).json() == []

        response = client.post(f"{BASE}{rid}/add_tag/", headers=auth, json={"key": a})
        assert response.status_code == 204, response.text
        assert response.content == b""
        response = client.post(f"{BASE}{rid}/add_tags/", headers=auth, json={"keys": [b, c, a, b]})
        assert response.status_code == 204, response.text
        got = client.get(f"{BASE}{rid}/tags/", headers=auth)
        assert got.status_code == 200
        assert got.json() == sorted([a, b, c])

        assert client.post(f"{BASE}{rid}/remove_tag/", headers=auth, json={"key": b}).status_code == 204
        assert tags_in_db(rid) == sorted([a, c])
        response = client.post(f"{BASE}{rid}/remove_tags/", headers=auth, json={"keys": [a, c, unique()]})
        assert response.status_code == 204
        assert tags_in_db(rid) == []

    def test_keys_are_case_sensitive_and_stored_as_given(
        self, client: TestClient, auth: dict[str, str]
    ) -> None:
        (rid,) = make_requests(1)
        key = unique("Mixed Case ✓")
        client.post(f"{BASE}{rid}/add_tags/", headers=auth, json={"keys": [key, key.lower()]})
        assert tags_in_db(rid) == sorted([key, key.lower()])
        client.post(f"{BASE}{rid}/remove_tag/", headers=auth, json={"key": key.upper()})
        assert tags_in_db(rid) == sorted([key, key.lower()])

    def test_adding_twice_is_a_no_op(self, client: TestClient, auth: dict[str, str]) -> None:
        (rid,) = make_requests(1)
        key = unique()
        for _ in range(2):
            assert client.post(f"{BASE}{rid}/add_tag/", headers=auth, json={"key": key}).status_code == 204
        assert tags_in_db(rid) == [key]

    @pytest.mark.parametrize(
        ("path", "body"),
        [
            ("tags/", None),
            ("add_tag/", {"key": "x"}),
            ("add_tags/", {"keys": ["x"]}),
            ("remove_tag/", {"key": "x"}),
            ("remove_tags/", {"keys": ["x"]}),
        ],
    )
    def test_unknown_request_is_404(
        self, client: TestClient, auth: dict[str, str], path: str, body: dict[str, Any] | None
    ) -> None:
        url = f"{BASE}{2**62}/{path}"
        response = (
            client.get(url, headers=auth) if body is None else client.post(url, headers=auth, json=body)
        )
        assert response.status_code == 404
        assert response.json() == {"detail": "Not found."}

    @pytest.mark.parametrize(
        ("path", "body", "field"),
        [
            ("add_tag/", {}, "key"),
            ("add_tag/", {"key": ""}, "key"),
            ("add_tag/", {"key": "x" * 101}, "key"),
            ("add_tags/", {"keys": []}, "keys"),
            ("add_tags/", {"keys": ["ok", ""]}, "keys.1"),
            ("remove_tags/", {"key": "x"}, "keys"),
        ],
    )
    def test_invalid_body_is_400(
        self, client: TestClient, auth: dict[str, str], path: str, body: dict[str, Any], field: str
    ) -> None:
        (rid,) = make_requests(1)
        response = client.post(f"{BASE}{rid}/{path}", headers=auth, json=body)
        assert response.status_code == 400, response.text
        assert field in response.json()
        assert tags_in_db(rid) == []

    def test_key_of_100_characters_is_accepted(self, client: TestClient, auth: dict[str, str]) -> None:
        (rid,) = make_requests(1)
        key = unique()[:10] + "k" * 90
        assert client.post(f"{BASE}{rid}/add_tag/", headers=auth, json={"key": key}).status_code == 204
        assert tags_in_db(rid) == [key]

    def test_needs_a_token(self, client: TestClient) -> None:
        (rid,) = make_requests(1)
        assert client.get(f"{BASE}{rid}/tags/").status_code == 401

    def test_channel_twin_scopes_to_its_channel(self, client: TestClient, auth: dict[str, str]) -> None:
        (rid,) = make_requests(1, channel=2)
        key = unique()
        ok = client.post(
            f"/api/v1/channel/2/cancellation_requests/{rid}/add_tag/", headers=auth, json={"key": key}
        )
        assert ok.status_code == 204
        other = client.get(f"/api/v1/channel/1/cancellation_requests/{rid}/tags/", headers=auth)
        assert other.status_code == 404
        assert client.get(f"/api/v1/channel/2/cancellation_requests/{rid}/tags/", headers=auth).json() == [
            key
        ]


class TestListsByTag:
    def test_filter_and_exclude_combined_with_status(self, client: TestClient, auth: dict[str, str]) -> None:
        email = f"{unique('cust')}@example.com"
        approved = make_requests(3, status="approved", email=email)
        waiting = make_requests(2, status="waiting", email=email)
        key = unique()
        for rid in (approved[0], approved[1], waiting[0]):
            client.post(f"{BASE}{rid}/add_tag/", headers=auth, json={"key": key})

        response = client.get(
            f"{BASE}filter_by_tags/", headers=auth, params={"key": key, "status": "approved"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert [r["id"] for r in body["results"]] == [approved[1], approved[0]]
        assert body["count"] == 2
        assert body["previous"] is None

        excluded = client.get(
            f"{BASE}exclude_by_tags/", headers=auth, params={"key": key, "email": email.upper()}
        ).json()
        assert [r["id"] for r in excluded["results"]] == [waiting[1], approved[2]]

    def test_pages_and_key_in_body(self, client: TestClient, auth: dict[str, str]) -> None:
        ids = make_requests(5)
        key = unique()
        client.post(f"{BASE}bulk_add_tags/", headers=auth, json={"objects": ids, "keys": [key]})
        first = client.request("GET", f"{BASE}filter_by_tags/?limit=2", headers=auth, json={"key": key})
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["count"] == 5
        assert [r["id"] for r in body["results"]] == ids[::-1][:2]
        assert body["next"] is not None
        assert "page=2" in body["next"]
        third = client.get(f"{BASE}filter_by_tags/", headers=auth, params={"key": key, "limit": 2, "page": 3})
        assert [r["id"] for r in third.json()["results"]] == [ids[0]]
        assert third.json()["next"] is None
        beyond = client.get(
            f"{BASE}filter_by_tags/", headers=auth, params={"key": key, "limit": 2, "page": 4}
        )
        assert beyond.status_code == 404
        assert beyond.json() == {"detail": "Not found."}

    @pytest.mark.parametrize(
        ("path", "extra"),
        [("filter_by_tags/", {}), ("filter_by_tags/", {"status": "waiting"}), ("exclude_by_tags/", {})],
    )
    def test_links_carry_the_keyset_both_ways(
        self, client: TestClient, auth: dict[str, str], path: str, extra: dict[str, str]
    ) -> None:
        # Given 5 requests of one e-mail, all tagged with two keys (a distinct semi-join)
        email = f"{unique('keyset')}@example.com"
        ids = make_requests(5, email=email)
        keys = [unique(), unique()]
        client.post(f"{BASE}bulk_add_tags/", headers=auth, json={"objects": ids, "keys": keys})
        if path == "exclude_by_tags/":
            keys = [unique()]  # nobody carries it: every request of the e-mail is listed
        params: dict[str, Any] = {"key": keys, "limit": 2, "email": email, **extra}
        # When the next links are followed to the end, then the previous links back to the start
        pages, bodies = [], []
        url: str | None = f"{BASE}{path}?" + str(httpx.QueryParams(params))
        while url:
            body = client.get(url, headers=auth).json()
            bodies.append(body)
            pages.append([r["id"] for r in body["results"]])
            url = body["next"]
        back, url = [], bodies[-1]["previous"]
        while url:
            back.append([r["id"] for r in client.get(url, headers=auth).json()["results"]])
            url = client.get(url, headers=auth).json()["previous"]
        # Then the pages are the requests newest first, the same both ways, with keysets in the links
        assert pages == [ids[::-1][0:2], ids[::-1][2:4], ids[::-1][4:]]
        assert back == pages[-2::-1]
        assert f"page_after={pages[0][-1]}" in bodies[0]["next"]
        assert f"page_before={pages[2][0]}" in bodies[2]["previous"]

    @pytest.mark.parametrize("path", ["filter_by_tags/", "exclude_by_tags/"])
    def test_missing_key_is_400(self, client: TestClient, auth: dict[str, str], path: str) -> None:
        response = client.get(f"{BASE}{path}", headers=auth, params={"status": "approved"})
        assert response.status_code == 400
        assert response.json() == {"key": ["This field is required."], "code": "required"}

    def test_bad_filter_is_400(self, client: TestClient, auth: dict[str, str]) -> None:
        response = client.get(f"{BASE}filter_by_tags/", headers=auth, params={"key": "x", "status": "nope"})
        assert response.status_code == 400
        assert "status" in response.json()

    def test_tag_filter_uses_the_tag_index(self, client: TestClient, auth: dict[str, str]) -> None:
        from sqlalchemy import select

        from cancelflow.db import get_engine
        from cancelflow.models import CancellationRequest
        from cancelflow.services.tags import has_any_tag

        stmt = (
            select(CancellationRequest.id).where(has_any_tag(["x"])).order_by(CancellationRequest.id.desc())
        )
        plan = explain(stmt, get_engine())
        assert (
            "ix_cancellation_request_tags_tag_id_request_id" in plan or "pk_cancellation_request_tags" in plan
        )


def explain(stmt: Any, engine: Any) -> str:
    """The plan with sequential scans priced out: shows that a usable index exists for the query."""
    compiled = stmt.compile(dialect=engine.dialect, compile_kwargs={"render_postcompile": True})
    with engine.connect() as connection:
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        rows = connection.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params).scalars().all()
        connection.rollback()
    return "\n".join(rows)


class TestListIndexes:
    """The list filters of services.queries are served by indexes (the 0004 migration adds them)."""

    @pytest.mark.parametrize(
        ("params", "index"),
        [
            ({"status": "approved"}, "ix_cancellation_requests_status_id"),
            ({"cancellation_plan_status": "waiting"}, "ix_cancellation_plans_status_request_id"),
            ({"order_number": "T1"}, "ix_orders_number_lower"),
            ({"email": "a@b.c"}, "ix_customers_email_lower"),
            ({"sku": "SKU-1"}, "ix_order_items_sku_lower"),
        ],
    )
    def test_filter_uses_index(self, database: str, params: dict[str, str], index: str) -> None:
        from sqlalchemy import select

        from cancelflow.db import get_engine
        from cancelflow.models import CancellationRequest
        from cancelflow.services.queries import RequestFilters, filter_requests

        stmt = filter_requests(select(CancellationRequest), RequestFilters.parse(params))
        stmt = stmt.order_by(CancellationRequest.id.desc()).limit(11)
        assert index in explain(stmt, get_engine())


class TestBulkSync:
    def test_bulk_add_and_remove_with_ids_alias(self, client: TestClient, auth: dict[str, str]) -> None:
        ids = make_requests(1000)
        a, b = unique(), unique()
        response = client.post(f"{BASE}bulk_add_tags/", headers=auth, json={"objects": ids, "keys": [a, b]})
        assert response.status_code == 204, response.text
        assert tagged_ids(a) == set(ids)
        assert tagged_ids(b) == set(ids)
        again = client.post(f"{BASE}bulk_add_tags/", headers=auth, json={"ids": ids[:10], "keys": [a]})
        assert again.status_code == 204
        assert tagged_ids(a) == set(ids)
        removed = client.post(f"{BASE}bulk_remove_tags/", headers=auth, json={"ids": ids[:400], "keys": [a]})
        assert removed.status_code == 204
        assert tagged_ids(a) == set(ids[400:])
        assert tagged_ids(b) == set(ids)

    def test_unknown_ids_are_skipped(self, client: TestClient, auth: dict[str, str]) -> None:
        ids = make_requests(2)
        key = unique()
        response = client.post(
            f"{BASE}bulk_add_tags/", headers=auth, json={"objects": [*ids, 2**62], "keys": [key]}
        )
        assert response.status_code == 204
        assert tagged_ids(key) == set(ids)

    def test_channel_route_skips_other_channels(self, client: TestClient, auth: dict[str, str]) -> None:
        mine, theirs = make_requests(2, channel=2), make_requests(2, channel=1)
        key = unique()
        response = client.post(
            "/api/v1/channel/2/cancellation_requests/bulk_add_tags/",
            headers=auth,
            json={"objects": mine + theirs, "keys": [key]},
        )
        assert response.status_code == 204
        assert tagged_ids(key) == set(mine)

    @pytest.mark.parametrize(
        "body",
        [
            {"keys": ["x"]},
            {"objects": [1]},
            {"objects": [], "keys": ["x"]},
            {"objects": ["a"], "keys": ["x"]},
        ],
    )
    def test_invalid_bulk_body_is_400(
        self, client: TestClient, auth: dict[str, str], body: dict[str, Any]
    ) -> None:
        response = client.post(f"{BASE}bulk_remove_tags/", headers=auth, json=body)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "invalid"
