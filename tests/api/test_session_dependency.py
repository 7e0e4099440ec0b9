"""`api.deps.DbSession`: one transaction per request, committed before the response is sent, rolled back
when the endpoint raises, and a commit that fails is the error it maps to (503 when the database is away),
never a 200."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from cancelflow.api import errors
from cancelflow.api.deps import DbSession
from cancelflow.db import transaction
from cancelflow.services import tags
from tests.api.test_tags import make_requests, unique
from tests.factories import token_headers


def _keys(request_id: int) -> list[str]:
    with transaction() as session:
        return tags.keys_of(session, request_id)


def session_app() -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.post("/tag/{request_id}/{key}/")
    def tag(request_id: int, key: str, session: DbSession) -> StreamingResponse:
        tags.add(session, request_id, [key])

        def body() -> Iterator[bytes]:
            # Sent after the endpoint returned: another connection already sees the write.
            yield json.dumps(_keys(request_id)).encode()

        return StreamingResponse(body(), media_type="application/json")

    @app.post("/tag-then-fail/{request_id}/{key}/")
    def tag_then_fail(request_id: int, key: str, session: DbSession) -> None:
        tags.add(session, request_id, [key])
        raise RuntimeError("after the write")

    return app


@pytest.fixture(scope="module")
def client(database: str) -> Iterator[TestClient]:
    with TestClient(session_app(), raise_server_exceptions=False) as test_client:
        yield test_client


def test_the_write_is_committed_before_the_response_is_sent(client: TestClient) -> None:
    (request_id,) = make_requests(1)
    key = unique()
    response = client.post(f"/tag/{request_id}/{key}/")
    assert response.status_code == 200, response.text
    assert response.json() == [key]


def test_an_endpoint_that_raises_writes_nothing(client: TestClient) -> None:
    (request_id,) = make_requests(1)
    response = client.post(f"/tag-then-fail/{request_id}/{unique()}/")
    assert response.status_code == 500
    assert _keys(request_id) == []


def test_a_commit_that_fails_is_a_503_not_a_200(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    (request_id,) = make_requests(1)

    def commit_fails(self: Session) -> None:
        raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(Session, "commit", commit_fails)
    response = client.post(f"/tag/{request_id}/{unique()}/")
    monkeypatch.undo()
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == errors.DATABASE_RETRY_AFTER
    assert response.json()["code"] == "database_unavailable"
    assert _keys(request_id) == []


def test_a_created_request_is_read_back_at_once(database: str) -> None:
    from cancelflow.api.app import create_app
    from tests.factories import new_order

    headers = token_headers("staff")
    order = new_order(quantity=2)
    with TestClient(create_app()) as client:
        created = client.post(
            "/api/v1/cancellation_requests/", json={"order_item": order.item_id, "reason": 1}, headers=headers
        )
        assert created.status_code == 201, created.text
        read = client.get(f"/api/v1/cancellation_requests/{created.json()['id']}/", headers=headers)
    assert read.status_code == 200, read.text
    assert read.json()["id"] == created.json()["id"]
