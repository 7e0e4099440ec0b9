"""Saved views, error pages and the work queues' paging, without a browser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from html import unescape

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cancelflow.api.app import create_app
from cancelflow.db import transaction
from cancelflow.models import SavedView, User
from cancelflow.services import keyset, replay
from cancelflow.services.after_commit import Send
from cancelflow.services.clock import now
from tests.conftest import restored_logging
from tests.console.support import csrf_of, sign_in, staff_user
from tests.factories import new_order, new_request
from tests.unit.test_replay import dead_route_step


def _signed_in() -> Iterator[TestClient]:
    with restored_logging(), TestClient(create_app()) as client:
        assert sign_in(client, staff_user()).status_code == 303
        yield client


@pytest.fixture(scope="module")
def console(database: str) -> Iterator[TestClient]:
    yield from _signed_in()


@pytest.fixture(scope="module")
def other(database: str) -> Iterator[TestClient]:
    """A second staff user, with sessions and views of their own."""
    yield from _signed_in()


def _post(client: TestClient, path: str, **fields: str) -> httpx.Response:
    token = csrf_of(client.get("/console/requests"))
    return client.post(path, data={"csrf_token": token, **fields}, follow_redirects=False)


def _views(client: TestClient) -> dict[str, str]:
    """The saved views the list shows: name -> link."""
    page = client.get("/console/requests")
    nav = re.search(r'<nav aria-label="Saved views">(.*?)</nav>', page.text, re.S)
    assert nav is not None, page.text
    return {
        unescape(name): unescape(href)
        for href, name in re.findall(r'<a href="([^"]+)"[^>]*>([^<]+)</a>', nav[1])
    }


def _view_id(name: str) -> int:
    with transaction() as session:
        return session.scalars(select(SavedView.id).where(SavedView.name == name)).one()


# --- saved views --------------------------------------------------------------------------------------


def test_save_the_filters_open_rename_and_delete(console: TestClient, other: TestClient) -> None:
    order = new_order(quantity=2)
    made = new_request(order, quantity=1)
    filtered = console.get(
        "/console/requests", params={"order_number": order.order.number, "status": "waiting"}
    )
    # The form keeps the list's state (its filters and tab), never the page cursor.
    query = unescape(re.search(r'name="query" value="([^"]*)"', filtered.text)[1])  # type: ignore[index]
    assert query == f"order_number={order.order.number}&status=waiting"

    saved = _post(console, "/console/views", name="  My   waiting  ", query=query + "&page_after=5&page=2")
    assert saved.status_code == 303
    assert saved.headers["location"] == f"/console/requests?{query}"
    opened = console.get(saved.headers["location"])
    assert f'<a href="/console/requests/{made.id}">' in opened.text
    assert re.search(r'aria-current="page">My waiting</a>', opened.text)
    assert _views(console)["My waiting"] == f"/console/requests?{query}"
    view_id = _view_id("My waiting")
    by_id = console.get(f"/console/views/{view_id}", follow_redirects=False)
    assert (by_id.status_code, by_id.headers["location"]) == (303, f"/console/requests?{query}")

    # Views are the user's own: the other user neither sees nor changes them.
    assert "My waiting" not in _views(other)
    assert other.get(f"/console/views/{view_id}", follow_redirects=False).status_code == 404
    assert _post(other, f"/console/views/{view_id}/rename", name="mine now").status_code == 404
    assert _post(other, f"/console/views/{view_id}/delete").status_code == 404
    assert _post(other, "/console/views", name="My waiting", query="status=approved").status_code == 303
    assert _views(console)["My waiting"] == f"/console/requests?{query}"

    # Saving under the same name again keeps the new filters; renaming onto another name is refused.
    assert _post(console, "/console/views", name="My waiting", query="status=rejected").status_code == 303
    assert _views(console)["My waiting"] == "/console/requests?status=rejected"
    assert _post(console, "/console/views", name="Approved", query="status=approved").status_code == 303
    clash = _post(console, f"/console/views/{view_id}/rename", name="Approved")
    assert clash.status_code == 400
    assert "You already have a view named Approved." in clash.text
    assert _post(console, f"/console/views/{view_id}/rename", name="Rejected").status_code == 303
    assert set(_views(console)) >= {"Rejected", "Approved"}
    manage = console.get("/console/views")
    assert 'aria-label="Rename Rejected"' in manage.text
    assert 'aria-label="Delete Rejected"' in manage.text
    assert _post(console, f"/console/views/{view_id}/delete").status_code == 303
    assert "Rejected" not in _views(console)
    assert _post(console, f"/console/views/{view_id}/delete").status_code == 404


def test_a_view_is_saved_only_with_valid_filters_a_name_and_the_csrf_token(console: TestClient) -> None:
    bad = _post(console, "/console/views", name="broken", query="created_date__date__gte=not-a-date")
    assert bad.status_code == 400
    assert 'role="alert"' in bad.text
    nameless = _post(console, "/console/views", name="   ", query="status=waiting")
    assert nameless.status_code == 400
    assert "Give the view a name." in nameless.text
    forged = console.post("/console/views", data={"name": "forged", "query": ""}, follow_redirects=False)
    assert forged.status_code == 403
    view_id = _view_id_after_save(console, "kept")
    for path in (f"/console/views/{view_id}/rename", f"/console/views/{view_id}/delete"):
        assert console.post(path, data={"name": "x"}, follow_redirects=False).status_code == 403
    assert "kept" in _views(console)
    with transaction() as session:
        names = set(session.scalars(select(SavedView.name)))
    assert not names & {"broken", "forged", "x"}


def _view_id_after_save(client: TestClient, name: str) -> int:
    assert _post(client, "/console/views", name=name, query="escalated=true").status_code == 303
    return _view_id(name)


def test_a_users_views_go_with_the_user(database: str) -> None:
    with restored_logging(), TestClient(create_app()) as client:
        username = staff_user()
        assert sign_in(client, username).status_code == 303
        assert _post(client, "/console/views", name="mine", query="status=waiting").status_code == 303
    with transaction() as session:
        user = session.scalars(select(User).where(User.username == username)).one()
        assert session.scalars(select(SavedView).where(SavedView.user_id == user.id)).one().name == "mine"
        session.delete(user)
        session.flush()
        assert session.scalars(select(SavedView).where(SavedView.user_id == user.id)).all() == []


# --- error pages --------------------------------------------------------------------------------------


def _is_error_page(answer: httpx.Response, status: int, title: str) -> None:
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith("text/html")
    assert f"<h1>{title}</h1>" in answer.text
    assert 'href="/console/requests"' in answer.text


def test_console_errors_are_pages_and_the_api_keeps_json(console: TestClient) -> None:
    _is_error_page(console.get("/console/requests/abc"), 404, "Not found")
    _is_error_page(console.get("/console/requests/0"), 404, "Not found")
    _is_error_page(console.get("/console/no-such-page"), 404, "Not found")
    missing = console.get("/console/requests/99999999999")
    _is_error_page(missing, 404, "Not found")
    assert 'aria-label="Main"' in missing.text  # the layout, with the navigation of the signed-in user
    _is_error_page(console.get("/console/requests/1/approve"), 405, "Not allowed")
    _is_error_page(console.post("/console/logout", follow_redirects=False), 403, "Refused")
    bad_filter = console.get("/console/requests", params={"status": "nonsense"})
    assert bad_filter.status_code == 400
    assert re.search(r'role="alert">[^<]*nonsense', bad_filter.text)
    # The API's own answers are unchanged.
    api = console.get("/api/v1/cancellation_requests/abc/")
    assert api.headers["content-type"].startswith("application/json")


def test_a_server_error_shows_no_detail(database: str) -> None:
    app = create_app()

    @app.get("/console/explode")
    def explode() -> None:
        raise RuntimeError("secret detail: DE89370400440532013000")

    with restored_logging(), TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/console/explode")
        _is_error_page(answer, 500, "Something went wrong")
        assert "secret" not in answer.text
        assert "RuntimeError" not in answer.text
        api = client.get("/api/v1/explode-elsewhere")
        assert api.headers["content-type"].startswith("application/json")


# --- live updates -------------------------------------------------------------------------------------


def test_the_polling_page_gets_its_decision_forms_only_when_the_status_changed(console: TestClient) -> None:
    request = new_request()
    full = console.get(f"/console/requests/{request.id}")
    assert 'id="decision"' in full.text
    assert 'hx-vals=\'{"shown": "waiting"}\'' in full.text
    polled = {"X-Console-Poll": "1"}
    same = console.get(f"/console/requests/{request.id}", params={"shown": "waiting"}, headers=polled)
    assert 'id="decision-unchanged"' in same.text
    assert 'id="decision"' not in same.text
    moved = console.get(f"/console/requests/{request.id}", params={"shown": "approved"}, headers=polled)
    assert 'id="decision"' in moved.text


# --- the work queues' paging --------------------------------------------------------------------------


def test_dead_steps_are_paged_by_keyset(
    console: TestClient, sent: list[Send], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cancelflow.console import queues

    with transaction() as session:
        # Steps dying in one transaction share their `modified_date`: the id breaks the tie.
        made = [dead_route_step(session)[1].id for _ in range(5)]
    with transaction() as session:
        expected = [s.id for s in replay.dead_steps(session, limit=100_000)]
    assert set(made) <= set(expected)
    monkeypatch.setattr(queues, "PAGE_SIZE", 2)
    seen: list[int] = []
    url: str | None = "/console/dead-steps"
    pages: list[str] = []
    while url is not None:
        page = console.get(url)
        assert page.status_code == 200
        pages.append(url)
        seen += [int(i) for i in re.findall(r'aria-label="Replay step (\d+)"', page.text)]
        link = re.search(r'href="([^"]+)" rel="next"', page.text)
        url = unescape(link[1]) if link else None
    assert seen == expected
    # Back from the last page by the previous links gives the same rows in the same order.
    last = console.get(pages[-1])
    back: list[int] = []
    page = last
    while True:
        link = re.search(r'href="([^"]+)" rel="prev"', page.text)
        if link is None:
            break
        page = console.get(unescape(link[1]))
        back = [int(i) for i in re.findall(r'aria-label="Replay step (\d+)"', page.text)] + back
    assert back + [int(i) for i in re.findall(r'aria-label="Replay step (\d+)"', last.text)] == expected
    # An action on a later page comes back to that page.
    second = pages[1]
    target = re.findall(r'aria-label="Replay step (\d+)"', console.get(second).text)[0]
    answer = _post(console, f"/console/dead-steps/{target}/replay?{second.split('?', 1)[1]}")
    assert (answer.status_code, answer.headers["location"]) == (303, second)


def test_a_bad_page_link_is_a_400_page(console: TestClient) -> None:
    for query in ("after=abc", "after=1_2_3", "before=999999999999999999_1", "after=1_1&before=1_1"):
        _is_error_page_or_first(console.get(f"/console/dead-steps?{query}"))
    _is_error_page_or_first(console.get("/console/deliveries?after=x"))
    _is_error_page_or_first(console.get("/console/escalations?before=-1_2"))


def _is_error_page_or_first(answer: httpx.Response) -> None:
    assert answer.status_code == 400
    assert "<h1>Bad page link</h1>" in answer.text
    assert "First page" in answer.text


def test_the_cursor_text_round_trips() -> None:
    cursor = keyset.Cursor(datetime, int)
    key = (now(), 12345)
    assert cursor.read(cursor.write(key), field="after") == key
