"""Text PostgreSQL cannot store (NUL, lone surrogates), sent to every text input of every operation.

The operations and their inputs are read from the app's own OpenAPI schema (`/api/schema/`): every
string path, query and header parameter, and every string leaf of every JSON request body (through
`$ref`, `anyOf`, arrays and free-form objects). Hypothesis draws the bad strings; bodies go out as raw
JSON bytes, so a lone surrogate travels as the `\\ud800` escape a real client would send. Each answer
must be a 4xx in the path's dialect naming the field, and no table may gain or lose a row.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from cancelflow.api.app import create_app
from cancelflow.db import transaction
from cancelflow.models.base import Base
from tests.factories import load, order_payload, service_payload, token_key
from tests.harness import repeatable_examples

APP = create_app()  # reads settings only (tests/conftest.py set them); no database until a request
SCHEMA: dict[str, Any] = APP.openapi()
METHODS = ("get", "post", "put", "patch", "delete")

NUL = st.just("\x00")
SURROGATE = st.characters(categories=["Cs"])  # U+D800..U+DFFF, each one alone


def bad_text(bad: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Ordinary text with at least one character that cannot be stored somewhere in it."""
    return st.builds(lambda a, c, b: a + c + b, st.text(max_size=6), bad, st.text(max_size=6))


# --- the schema's text inputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    method: str
    path: str
    where: str  # path, query, header or body
    name: str  # the parameter, or the body field as a dotted path
    body_path: tuple[str | int, ...] = ()
    query: tuple[str, ...] = ()  # every text query parameter of the operation, all sent bad at once

    @property
    def id(self) -> str:
        return f"{self.method.upper()} {self.path} {self.where}:{self.name}"


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = SCHEMA
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _is_text(schema: dict[str, Any]) -> bool:
    schema = _resolve(schema)
    if schema.get("type") == "string":
        return True
    return any(_is_text(option) for option in schema.get("anyOf", []) + schema.get("oneOf", []))


def _string_leaves(schema: dict[str, Any], at: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    schema = _resolve(schema)
    if schema.get("type") == "string":
        yield at
    for option in schema.get("anyOf", []) + schema.get("oneOf", []):
        yield from _string_leaves(option, at)
    if schema.get("type") == "array" and "items" in schema:
        yield from _string_leaves(schema["items"], (*at, 0))
    for name, prop in schema.get("properties", {}).items():
        yield from _string_leaves(prop, (*at, name))
    extra = schema.get("additionalProperties")
    if schema.get("type") == "object" and not schema.get("properties") and extra not in (None, False):
        yield from _string_leaves(
            extra if isinstance(extra, dict) and extra else {"type": "string"}, (*at, "k")
        )


def targets() -> list[Target]:
    found: dict[str, Target] = {}
    for path, operations in SCHEMA["paths"].items():
        for method in METHODS:
            operation = operations.get(method)
            if operation is None:
                continue
            query: list[str] = []
            for param in operation.get("parameters", []):
                if not _is_text(param.get("schema", {})):
                    continue
                if param["in"] == "query":
                    query.append(param["name"])
                else:
                    t = Target(method, path, param["in"], param["name"])
                    found[t.id] = t
            if query:
                t = Target(method, path, "query", "every text parameter", query=tuple(sorted(set(query))))
                found[t.id] = t
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if content is not None:
                for leaf in _string_leaves(content["schema"]):
                    t = Target(method, path, "body", ".".join(str(p) for p in leaf), leaf)
                    found[t.id] = t
    return list(found.values())


TARGETS = targets()


# --- what a request is made of ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    headers: dict[str, str]
    path_values: dict[str, str]


@pytest.fixture(scope="module")
def client(database: str) -> Iterator[TestClient]:
    with TestClient(APP) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def seeded(database: str) -> Seeded:
    """Real rows behind every id in a path, and a staff token in both header styles: without the check,
    each request would get as far as the database."""
    service = service_payload()
    order = order_payload(service_handle=service["handle"])
    load({"fulfillment_services": [service], "orders": [order]})
    key = token_key("staff")
    with transaction() as session:
        request_id = session.execute(
            text(
                "INSERT INTO cancellation_requests (uuid, order_item_id, order_id, channel_id, reason_id, "
                "cancellation_type, status, quantity, fully_refund_as_loyalty_money, attributes, version) "
                "VALUES (gen_random_uuid(), :item, :order, 1, 1, 'cancel', 'waiting', 1, false, '{}', 1) "
                "RETURNING id"
            ),
            {"item": order["items"][0]["id"], "order": order["id"]},
        ).scalar_one()
    return Seeded(
        headers={"Authorization": f"Token {key}", "X-Shopify-Access-Token": key},
        path_values={
            "id": str(request_id),
            "channel_id": "1",
            "order_id": str(order["id"]),
            "fulfillment_order_id": str(order["fulfillment_orders"][0]["id"]),
            "version": "2021-07",
        },
    )


def row_counts() -> dict[str, int]:
    tables = [t.name for t in Base.metadata.sorted_tables]
    sql = " UNION ALL ".join(f"SELECT '{name}', count(*) FROM \"{name}\"" for name in tables)  # noqa: S608
    with transaction() as session:
        return {name: int(n) for name, n in session.execute(text(sql))}


def _example_body(target: Target) -> Any:
    operation = SCHEMA["paths"][target.path][target.method]
    schema = _resolve(operation["requestBody"]["content"]["application/json"]["schema"])
    for option in [schema, *schema.get("anyOf", [])]:
        example = _resolve(option).get("example")
        if example is not None:
            return copy.deepcopy(example)
    return {}


def _put(body: Any, path: tuple[str | int, ...], value: str) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = body if isinstance(body, list) and body else [None]
        items[0] = _put(items[0], rest, value)
        return items
    node = body if isinstance(body, dict) else {}
    node[head] = _put(node.get(head), rest, value)
    return node


def send(client: TestClient, seeded: Seeded, target: Target, value: str) -> Any:
    path = target.path
    values = dict(seeded.path_values)
    if target.where == "path":
        values[target.name] = quote(value, safe="")
    for name, given_value in values.items():
        path = path.replace("{" + name + "}", given_value)
    headers = dict(seeded.headers)
    params: dict[str, str] = {}
    content: bytes | None = None
    if target.where == "query":
        params = dict.fromkeys(target.query, value)
    elif target.where == "header":
        headers[target.name] = value
    elif target.where == "body":
        # ensure_ascii: NUL and lone surrogates travel as \u escapes, as any JSON client sends them.
        content = json.dumps(_put(_example_body(target), target.body_path, value)).encode("ascii")
        headers["Content-Type"] = "application/json"
    return client.request(target.method.upper(), path, params=params, headers=headers, content=content)


def named_fields(response: Any, *, shopify: bool) -> set[str]:
    body = response.json()
    if shopify:
        return set(body["errors"]) if isinstance(body.get("errors"), dict) else set()
    return set(body) - {"code"}


HEADER_SAFE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)  # what a header value can carry


@pytest.mark.parametrize("target", TARGETS, ids=[t.id for t in TARGETS])
def test_text_that_cannot_be_stored_is_refused_naming_the_field(
    client: TestClient, seeded: Seeded, target: Target
) -> None:
    # Query strings, paths and headers carry bytes: a lone surrogate has none, NUL is %00 (or a 0 byte).
    if target.where == "body":
        values = bad_text(st.one_of(NUL, SURROGATE))
    elif target.where == "header":
        values = st.builds(
            lambda a, b: a + "\x00" + b, st.text(HEADER_SAFE, max_size=6), st.text(HEADER_SAFE, max_size=6)
        )
    else:
        values = bad_text(NUL)
    shopify = target.path.startswith("/admin/api/")
    expected = {n.lower() for n in (target.query or [target.name])}
    before = row_counts()

    @repeatable_examples(3)
    @given(value=values)
    def check(value: str) -> None:
        response = send(client, seeded, target, value)
        assert response.status_code < 500, response.text
        assert response.status_code == (422 if shopify else 400), response.text
        named = {n.lower() for n in named_fields(response, shopify=shopify)}
        assert expected <= named, response.text

    check()
    assert row_counts() == before


def test_every_interface_of_the_schema_is_covered() -> None:
    """The walk above finds the inputs the defect was reported on: it cannot silently cover nothing."""
    ids = {t.id for t in TARGETS}
    for expected in [
        "POST /api/v1/cancellation_requests/{id}/add_tag/ body:key",
        "POST /api/v1/cancellation_requests/{id}/add_tags/ body:keys.0",
        "POST /api/v1/cancellation_requests/bulk_remove_tags/ body:keys.0",
        "POST /api/v1/webhooks/ body:url",
        "POST /api/v1/auth/login/ body:username",
        "POST /api/v1/orders/ body:orders.0.items.0.sku",
        "POST /api/v1/cancellation_requests/ header:Idempotency-Key",
        "POST /admin/api/{version}/fulfillment_orders/{fulfillment_order_id}/cancellation_request.json "
        "body:cancellation_request.message",
        "GET /admin/api/{version}/assigned_fulfillment_orders.json path:version",
    ]:
        assert expected in ids
    queries = {(t.method, t.path): t.query for t in TARGETS if t.where == "query"}
    assert "key" in queries[("get", "/api/v1/cancellation_requests/filter_by_tags/")]
    assert "key" in queries[("get", "/api/v1/channel/{channel_id}/cancellation_requests/exclude_by_tags/")]
    assert "order_number" in queries[("get", "/api/v1/cancellation_requests/")]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32"])
def test_a_json_body_in_utf16_or_utf32_is_checked_too(
    client: TestClient, seeded: Seeded, encoding: str
) -> None:
    """`json.loads` reads these encodings, where a lone surrogate needs no escape at all."""
    body = '{"key": "tag\ud800"}'.encode(encoding, "surrogatepass")
    before = row_counts()
    response = client.post(
        f"/api/v1/cancellation_requests/{seeded.path_values['id']}/add_tag/",
        headers={**seeded.headers, "Content-Type": "application/json"},
        content=body,
    )
    assert response.status_code == 400, response.text
    assert response.json()["key"] == ["Surrogate characters are not allowed: U+D800."]
    assert row_counts() == before
