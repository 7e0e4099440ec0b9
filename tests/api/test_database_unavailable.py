"""A database that does not answer is a 503 with `Retry-After` in the path's dialect, never a 500: in the
token lookup (the first query of every authenticated request) as in a router's own work.

The database is made unreachable for real: every session of this process is bound to an engine on a
port where nothing listens, so the driver raises its own `OperationalError`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.orm import sessionmaker

from cancelflow.api.app import create_app
from tests.factories import token_key
from tests.harness import free_port

AKINON_LIST = "/api/v1/cancellation_requests/"
SHOPIFY_FO = "/admin/api/2021-07/fulfillment_orders/1.json"


@pytest.fixture(scope="module")
def staff_key(database: str) -> str:
    return token_key("staff")


@pytest.fixture
def client(database: str) -> Iterator[TestClient]:
    # raise_server_exceptions=False: a 500 is answered as a client would see it, not re-raised here.
    with TestClient(create_app(), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def database_away(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    dead = create_engine(
        f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/cancelflow",
        connect_args={"connect_timeout": 2},
    )
    factory = sessionmaker(bind=dead, expire_on_commit=False)
    monkeypatch.setattr("cancelflow.db._session_factory", lambda url=None: factory)
    yield
    dead.dispose()


def test_token_lookup_without_a_database_is_a_503_in_akinon_form(
    client: TestClient, staff_key: str, database_away: None
) -> None:
    response = client.get(AKINON_LIST, headers={"Authorization": f"Token {staff_key}"})
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    assert response.json() == {
        "detail": "The database is unavailable; retry shortly.",
        "code": "database_unavailable",
    }


def test_token_lookup_without_a_database_is_a_503_in_shopify_form(
    client: TestClient, staff_key: str, database_away: None
) -> None:
    response = client.get(SHOPIFY_FO, headers={"X-Shopify-Access-Token": staff_key})
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    assert response.json() == {"errors": "The database is unavailable; retry shortly."}


def test_a_router_losing_its_connection_is_a_503(
    client: TestClient, staff_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token lookup succeeds; the router's own query then finds its connection gone."""
    import psycopg2

    def dropped(*args: object, **kwargs: object) -> None:
        raise DBAPIError(
            "SELECT 1", {}, psycopg2.InterfaceError("connection already closed"), connection_invalidated=True
        )

    monkeypatch.setattr("cancelflow.api.cancellation_requests.queries.list_requests", dropped)
    response = client.get(AKINON_LIST, headers={"Authorization": f"Token {staff_key}"})
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "database_unavailable"


def test_a_statement_the_database_refuses_stays_a_500(
    client: TestClient, staff_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only an unreachable database is a 503: a broken query is a bug, and must not invite retries."""
    import psycopg2

    def broken(*args: object, **kwargs: object) -> None:
        raise ProgrammingError("SELECT nope", {}, psycopg2.ProgrammingError("column nope does not exist"))

    monkeypatch.setattr("cancelflow.api.cancellation_requests.queries.list_requests", broken)
    response = client.get(AKINON_LIST, headers={"Authorization": f"Token {staff_key}"})
    assert response.status_code == 500
    assert "Retry-After" not in response.headers


def test_health_stays_503_without_a_database(client: TestClient, database_away: None) -> None:
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"ok": False, "database": "unreachable"}
