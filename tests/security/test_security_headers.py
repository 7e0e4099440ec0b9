"""Answers that carry tokens and personal data are never cached (`Cache-Control: no-store`), and every
answer carries the basic browser protections; the offline Swagger UI keeps a policy that lets its own
files and its start-up script run, and nothing else."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from cancelflow.api.app import create_app
from cancelflow.api.docs import STATIC_URL
from cancelflow.db import transaction
from cancelflow.services import users
from tests.factories import token_headers

BASIC = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY"}


@pytest.fixture(scope="module")
def client(database: str) -> Iterator[TestClient]:
    with TestClient(create_app(), client=(f"192.0.2.{uuid.uuid4().int % 250 + 1}", 1)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def staff(database: str) -> dict[str, str]:
    return token_headers("staff", permissions=["view_iban"])


def assert_basic(headers: dict[str, str]) -> None:
    for name, value in BASIC.items():
        assert headers.get(name) == value, name


def test_a_login_token_is_not_cached(client: TestClient) -> None:
    name = f"hdr-{uuid.uuid4().hex[:10]}"
    with transaction() as session:
        users.create_user(session, username=name, password="correct horse")
    response = client.post("/api/v1/auth/login/", json={"username": name, "password": "correct horse"})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert_basic(dict(response.headers))


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/cancellation_requests/",
        "/api/v1/cancellation_requests/detailed/",
        "/api/v1/active_user/",
        "/api/v1/webhooks/",
        "/api/v1/cancellation_requests/999999999/",
        "/admin/api/2021-07/assigned_fulfillment_orders.json",
    ],
)
def test_api_answers_are_not_cached_and_load_nothing(
    client: TestClient, staff: dict[str, str], path: str
) -> None:
    response = client.get(path, headers={**staff, "X-Shopify-Access-Token": staff["Authorization"][6:]})
    assert response.headers["cache-control"] == "no-store", response.status_code
    assert_basic(dict(response.headers))
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp


def test_errors_carry_them_too(client: TestClient) -> None:
    response = client.get("/api/v1/cancellation_requests/")
    assert response.status_code == 401
    assert response.headers["cache-control"] == "no-store"
    assert_basic(dict(response.headers))


def test_the_docs_page_may_run_its_own_scripts_only(client: TestClient) -> None:
    page = client.get("/api/docs/")
    assert page.status_code == 200
    assert_basic(dict(page.headers))
    csp = dict(item.strip().split(" ", 1) for item in page.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'"
    scripts = csp["script-src"].split()
    assert scripts[0] == "'self'"
    assert all(s.startswith("'sha256-") for s in scripts[1:])
    assert "'unsafe-inline'" not in scripts
    assert "'unsafe-eval'" not in scripts
    assert csp["connect-src"] == "'self'"
    # every asset the page names is served here, so 'self' covers it
    for asset in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert asset.startswith(STATIC_URL)
        assert client.get(asset).status_code == 200
    # and the start-up script is the one the hash allows
    inline = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    assert len(inline) == len(scripts) - 1 == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert f"'sha256-{digest}'" in scripts
