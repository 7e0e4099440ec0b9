"""The console's read pages without a browser: the list's filters, tabs, paging and masking, and a
request's page, all over the same services as the API."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from cancelflow.api.app import create_app
from cancelflow.db import transaction
from cancelflow.services import approval, tags
from cancelflow.services.after_commit import Send
from cancelflow.services.locking import get_request
from tests.conftest import restored_logging
from tests.console.support import csrf_of, sign_in, staff_user
from tests.factories import VALID_IBAN, new_order, new_request
from tests.unit.test_replay import dead_route_step

MASKED = re.compile(r"DE\*+3000")


def _client(*permissions: str) -> Iterator[TestClient]:
    with restored_logging(), TestClient(create_app()) as client:
        assert sign_in(client, staff_user(*permissions)).status_code == 303
        yield client


@pytest.fixture(scope="module")
def console(database: str) -> Iterator[TestClient]:
    yield from _client()


@pytest.fixture(scope="module")
def iban_reader(database: str) -> Iterator[TestClient]:
    yield from _client("view_iban")


def _ids(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'<a href="/console/requests/(\d+)">', page)]


def test_filter_by_order_number_newest_first_with_tabs(console: TestClient) -> None:
    order = new_order(quantity=3)
    first = new_request(order, quantity=1)
    second = new_request(order, quantity=1)
    page = console.get("/console/requests", params={"order_number": order.order.number})
    assert page.status_code == 200
    assert _ids(page.text) == [second.id, first.id]
    # The tabs count under the other filters and keep them in their links.
    assert re.search(r'status=waiting[^"]*">\s*waiting <span class="count">2</span>', page.text)
    assert f"order_number={order.order.number}" in page.text
    approved = console.get(
        "/console/requests", params={"order_number": order.order.number, "status": "approved"}
    )
    assert _ids(approved.text) == []


def test_keyset_paging_follows_the_api_cursor(console: TestClient) -> None:
    order = new_order(quantity=30)
    made = [new_request(order, quantity=1).id for _ in range(27)]
    first = console.get("/console/requests", params={"order_number": order.order.number})
    assert _ids(first.text) == made[::-1][:25]
    link = re.search(r'href="([^"]+)" rel="next"', first.text)
    assert link is not None
    assert f"page_after={made[2]}" in link[1].replace("&amp;", "&")
    second = console.get(link[1].replace("&amp;", "&"))
    assert _ids(second.text) == made[1::-1]
    assert 'rel="next"' not in second.text
    assert 'rel="prev"' in second.text


def test_a_bad_filter_is_shown_not_a_crash(console: TestClient) -> None:
    page = console.get("/console/requests", params={"created_date__date__gte": "not a date"})
    assert page.status_code == 400
    assert 'role="alert"' in page.text


def test_ibans_are_masked_without_view_iban(console: TestClient, iban_reader: TestClient) -> None:
    order = new_order(method="bank_transfer", channel=1)
    request = new_request(order, iban=VALID_IBAN, holder_name="Max Mustermann")
    for path in (f"/console/requests?pk={request.id}", f"/console/requests/{request.id}"):
        masked = console.get(path)
        assert masked.status_code == 200
        assert VALID_IBAN not in masked.text
        assert MASKED.search(masked.text)
        assert VALID_IBAN in iban_reader.get(path).text
    # Filtering by the IBAN would confirm a guess: refused without the permission.
    assert console.get("/console/requests", params={"iban": VALID_IBAN}).status_code == 400
    assert _ids(iban_reader.get("/console/requests", params={"iban": VALID_IBAN}).text)


def test_the_request_page_shows_the_timeline_with_its_actor(console: TestClient, sent: list[Send]) -> None:
    request = new_request()
    with transaction() as session:
        approval.approve(session, get_request(session, request.id), actor="staff (user:42)")
    page = console.get(f"/console/requests/{request.id}")
    assert page.status_code == 200
    assert "Timeline" in page.text
    assert "waiting → approved" in page.text
    assert "by staff (user:42)" in page.text
    assert sent  # the approval asked for routing, as through the API
    assert console.get("/console/requests/999999999").status_code == 404


def _form_post(client: TestClient, path: str, **fields: str) -> httpx.Response:
    page = client.get("/console/requests")
    return client.post(path, data={"csrf_token": csrf_of(page), **fields}, follow_redirects=False)


def test_approve_records_the_staff_user(console: TestClient, sent: list[Send]) -> None:
    request = new_request()
    answer = _form_post(console, f"/console/requests/{request.id}/approve")
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/console/requests/{request.id}"
    page = console.get(answer.headers["location"])
    assert re.search(r'waiting → approved\s+<span class="actor">by staff \(user:\d+\)</span>', page.text)
    # Approving a rejected request is the service's refusal, shown on the page.
    rejected = new_request()
    assert (
        _form_post(console, f"/console/requests/{rejected.id}/reject", reason="duplicate").status_code == 303
    )
    refused = _form_post(console, f"/console/requests/{rejected.id}/approve")
    assert refused.status_code == 400
    assert "Cannot change status from rejected to approved" in refused.text


def test_reject_needs_a_reason_and_records_it(console: TestClient) -> None:
    request = new_request()
    assert _form_post(console, f"/console/requests/{request.id}/reject", reason=" ").status_code == 400
    answer = _form_post(console, f"/console/requests/{request.id}/reject", reason="customer called back")
    assert answer.status_code == 303
    page = console.get(f"/console/requests/{request.id}")
    assert "customer called back" in page.text
    assert "status-rejected" in page.text


def test_tags_are_added_and_removed(console: TestClient) -> None:
    request = new_request()
    assert _form_post(console, f"/console/requests/{request.id}/tags", key="vip").status_code == 303
    assert 'aria-label="Remove tag vip"' in console.get(f"/console/requests/{request.id}").text
    assert _form_post(console, f"/console/requests/{request.id}/tags/remove", key="vip").status_code == 303
    assert "Remove tag vip" not in console.get(f"/console/requests/{request.id}").text
    assert _form_post(console, "/console/requests/999999999/tags", key="vip").status_code == 404


def test_actions_need_the_csrf_token(console: TestClient) -> None:
    request = new_request()
    answer = console.post(f"/console/requests/{request.id}/approve", follow_redirects=False)
    assert answer.status_code == 403
    assert "status-waiting" in console.get(f"/console/requests/{request.id}").text


def test_filter_by_tag_with_the_other_filters(console: TestClient) -> None:
    order = new_order(quantity=3)
    made = [new_request(order, quantity=1).id for _ in range(3)]
    with transaction() as session:
        for request_id in made[:2]:
            tags.add(session, request_id, ["urgent-desk"])
    page = console.get("/console/requests", params={"order_number": order.order.number, "tag": "urgent-desk"})
    assert page.status_code == 200
    assert _ids(page.text) == made[1::-1]
    assert re.search(r'">\s*waiting <span class="count">2</span>', page.text)
    assert 'value="urgent-desk"' in page.text
    too_long = console.get("/console/requests", params={"tag": "x" * 10_000})
    assert too_long.status_code == 400


def test_dead_steps_are_listed_and_replayed(console: TestClient, sent: list[Send]) -> None:
    with transaction() as session:
        _plan, step = dead_route_step(session)
        step_id = step.id
    page = console.get("/console/dead-steps")
    assert page.status_code == 200
    assert f'aria-label="Replay step {step_id}"' in page.text
    assert "TransientError: 503" in page.text
    answer = _form_post(console, f"/console/dead-steps/{step_id}/replay")
    assert answer.status_code == 303
    assert f'aria-label="Replay step {step_id}"' not in console.get("/console/dead-steps").text
    again = _form_post(console, f"/console/dead-steps/{step_id}/replay")
    assert again.status_code == 409
    assert 'role="alert"' in again.text
    assert console.post(f"/console/dead-steps/{step_id}/replay", follow_redirects=False).status_code == 403
