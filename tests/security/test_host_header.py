"""A forged `Host` header never reaches a link the API hands out: `next` / `previous` of the request lists
(plain, channel, by tag) and the job URLs of exports and bulk tagging are built from
`CANCELFLOW_PUBLIC_BASE_URL`, or are paths when it is unset."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cancelflow.config import get_settings
from cancelflow.services import after_commit, bulk
from tests.api.test_tags import make_requests
from tests.factories import token_headers

BASE = "/api/v1/cancellation_requests/"
EVIL = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}
PUBLIC = "https://cancelflow.shop.example"


@pytest.fixture(scope="module")
def staff(database: str) -> dict[str, str]:
    return {**token_headers("staff"), **EVIL}


@pytest.fixture(scope="module")
def tagged(client: TestClient, staff: dict[str, str]) -> tuple[str, list[int]]:
    ids = make_requests(3, channel=1)
    key = f"host-{uuid.uuid4().hex[:8]}"
    assert (
        client.post(f"{BASE}bulk_add_tags/", headers=staff, json={"objects": ids, "keys": [key]}).status_code
        == 204
    )
    return key, ids


@pytest.fixture(params=[None, PUBLIC], ids=["no public url", "public url"])
def public(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(get_settings(), "public_base_url", request.param)
    return request.param or ""


@pytest.fixture
def queued() -> Iterator[list[str]]:
    """Jobs are created but not handed to Celery (no worker here; only their URLs matter): the tasks
    their commits send are recorded instead."""
    sent: list[str] = []
    after_commit.set_sender(lambda send: sent.append(send.task))
    try:
        yield sent
    finally:
        after_commit.set_sender(None)


def assert_safe(url: str | None, public: str, path: str) -> None:
    assert url is not None
    assert "evil.example" not in url
    assert url.startswith(f"{public}{path}"), url


def pages(client: TestClient, staff: dict[str, str], path: str, **params: Any) -> list[dict[str, Any]]:
    first = client.get(path, headers=staff, params={"limit": 1, **params})
    assert first.status_code == 200, first.text
    second = client.get(first.json()["next"].removeprefix(PUBLIC), headers=staff)
    assert second.status_code == 200, second.text
    return [first.json(), second.json()]


@pytest.mark.parametrize("path", [BASE, f"{BASE}detailed/", "/api/v1/channel/1/cancellation_requests/"])
def test_list_links(
    client: TestClient, staff: dict[str, str], tagged: tuple[str, list[int]], public: str, path: str
) -> None:
    first, second = pages(client, staff, path, channel=1)
    assert_safe(first["next"], public, path)
    assert_safe(second["next"], public, path)
    assert_safe(second["previous"], public, path)


def test_links_of_the_list_by_tag(
    client: TestClient, staff: dict[str, str], tagged: tuple[str, list[int]], public: str
) -> None:
    first, second = pages(client, staff, f"{BASE}filter_by_tags/", key=tagged[0])
    assert_safe(first["next"], public, f"{BASE}filter_by_tags/")
    assert_safe(second["previous"], public, f"{BASE}filter_by_tags/")


def test_export_job_url(
    client: TestClient,
    staff: dict[str, str],
    tagged: tuple[str, list[int]],
    public: str,
    queued: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(get_settings(), "export_sync_max_rows", 0)
    response = client.get(
        f"{BASE}detailed/", headers=staff, params={"export_format": "csv", "pk__in": tagged[1][0]}
    )
    assert response.status_code == 202, response.text
    assert_safe(response.json()["url"], public, "/api/v1/exports/")
    assert queued == ["exports.run"]


def test_bulk_job_url(
    client: TestClient,
    staff: dict[str, str],
    tagged: tuple[str, list[int]],
    public: str,
    queued: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bulk, "SYNC_MAX_IDS", 1)
    body = {"objects": tagged[1], "keys": [f"bulk-{uuid.uuid4().hex[:6]}"]}
    response = client.post(f"{BASE}bulk_add_tags/", headers=staff, json=body)
    assert response.status_code == 202, response.text
    assert_safe(response.json()["url"], public, "/api/v1/bulk_jobs/")
    assert queued == ["tags.bulk"]
