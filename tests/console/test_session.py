"""Console sign-in without a browser: cookie flags, CSRF, expiry, and API tokens refused."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
import time_machine
from fastapi.testclient import TestClient

from cancelflow.api.app import create_app
from cancelflow.config import get_settings
from cancelflow.db import transaction
from cancelflow.services import users
from cancelflow.services.clock import now
from tests.conftest import restored_logging
from tests.console.support import PASSWORD, csrf_of, sign_in, staff_user
from tests.factories import token_headers


@pytest.fixture
def browser(database: str) -> Iterator[TestClient]:
    """A fresh client (its own cookie jar) on the app, for one test."""
    with restored_logging(), TestClient(create_app(), base_url="http://testserver") as client:
        yield client


def _set_cookie(response: httpx.Response, name: str) -> str:
    for value in response.headers.get_list("set-cookie"):
        if value.startswith(f"{name}="):
            return str(value)
    raise AssertionError(f"no {name} cookie in {response.headers}")


def test_sign_in_sets_an_http_only_lax_cookie_and_opens_the_list(browser: TestClient) -> None:
    answer = sign_in(browser, staff_user())
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/requests"
    cookie = _set_cookie(answer, "cancelflow_console").lower()
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    assert "path=/console/" in cookie
    assert "secure" not in cookie  # plain http here
    page = browser.get("/console/requests")
    assert page.status_code == 200
    assert "Cancellation requests" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "form-action 'self'" in page.headers["content-security-policy"]


def test_the_cookie_is_secure_over_https(database: str) -> None:
    with restored_logging(), TestClient(create_app(), base_url="https://testserver") as client:
        answer = sign_in(client, staff_user())
        assert answer.status_code == 303
        assert "secure" in _set_cookie(answer, "cancelflow_console").lower()


def test_a_wrong_password_is_refused_and_gives_no_session(browser: TestClient) -> None:
    answer = sign_in(browser, staff_user(), "not the password")
    assert answer.status_code == 400
    assert "Wrong username or password" in answer.text
    assert "cancelflow_console=" not in " ".join(answer.headers.get_list("set-cookie")).replace(
        "cancelflow_console_login=", ""
    )
    assert browser.get("/console/requests", follow_redirects=False).status_code == 303


def test_sign_in_is_throttled_like_the_api(browser: TestClient) -> None:
    name = staff_user()
    limit = int(get_settings().login_limit_per_username.split()[0])
    codes = [sign_in(browser, name, "wrong password").status_code for _ in range(limit + 1)]
    assert codes[:limit] == [400] * limit
    assert codes[limit] == 429


def test_a_sign_in_form_without_its_token_is_refused(browser: TestClient) -> None:
    name = staff_user()
    answer = browser.post(
        "/console/login", data={"username": name, "password": PASSWORD}, follow_redirects=False
    )
    assert answer.status_code == 403


def test_a_post_without_the_csrf_token_is_403(browser: TestClient) -> None:
    sign_in(browser, staff_user())
    page = browser.get("/console/requests")
    assert browser.post("/console/logout", follow_redirects=False).status_code == 403
    bad = browser.post("/console/logout", data={"csrf_token": "x" * 43}, follow_redirects=False)
    assert bad.status_code == 403
    assert browser.get("/console/requests").status_code == 200  # still signed in
    # With the token (form field or htmx header) the same request goes through.
    header = browser.post("/console/logout", headers={"X-CSRF-Token": csrf_of(page)}, follow_redirects=False)
    assert header.status_code == 303


def test_logout_ends_the_session(browser: TestClient) -> None:
    sign_in(browser, staff_user())
    page = browser.get("/console/requests")
    cookie = browser.cookies.get("cancelflow_console")
    answer = browser.post("/console/logout", data={"csrf_token": csrf_of(page)}, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/login"
    later = browser.get("/console/requests", follow_redirects=False)
    assert later.status_code == 303
    assert later.headers["location"].startswith("/console/login")
    # The old cookie is dead on the server too, not only dropped by the browser.
    browser.cookies.set("cancelflow_console", str(cookie), path="/console/")
    assert browser.get("/console/requests", follow_redirects=False).status_code == 303


def test_an_idle_session_expires(browser: TestClient) -> None:
    sign_in(browser, staff_user())
    idle = get_settings().console_session_idle
    with time_machine.travel(now() + timedelta(seconds=idle - 60), tick=False):
        assert browser.get("/console/requests", follow_redirects=False).status_code == 200
    with time_machine.travel(now() + timedelta(seconds=2 * idle), tick=False):
        answer = browser.get("/console/requests?status=waiting", follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/login?next=%2Fconsole%2Frequests%3Fstatus%3Dwaiting"


def test_a_password_change_ends_the_sessions(browser: TestClient) -> None:
    name = staff_user()
    sign_in(browser, name)
    assert browser.get("/console/requests", follow_redirects=False).status_code == 200
    with transaction() as session:
        users.set_password(session, name, "another long password")
    assert browser.get("/console/requests", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("kind", ["storefront", "staff"])
def test_api_tokens_give_no_console_access(browser: TestClient, kind: str) -> None:
    headers = token_headers(kind)
    for path in ("/console/requests", "/console/requests/1"):
        answer = browser.get(path, headers=headers, follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/console/login")
    assert browser.post("/console/logout", headers=headers, follow_redirects=False).status_code == 303


def test_sign_in_only_goes_back_to_a_console_page(browser: TestClient) -> None:
    form = browser.get("/console/login?next=https://evil.example/")
    assert 'name="next" value="/console/requests"' in form.text
    form = browser.get("/console/login?next=//evil.example/console/")
    assert 'value="//evil.example' not in form.text


def test_a_page_refreshing_itself_does_not_keep_the_session_alive(browser: TestClient) -> None:
    sign_in(browser, staff_user())
    idle = get_settings().console_session_idle
    start = now()
    poll = {"X-Console-Poll": "1", "HX-Request": "true"}
    with time_machine.travel(start + timedelta(seconds=idle - 60), tick=False):
        assert browser.get("/console/requests", headers=poll, follow_redirects=False).status_code == 200
    with time_machine.travel(start + timedelta(seconds=idle + 30), tick=False):
        assert browser.get("/console/requests", follow_redirects=False).status_code == 303


def test_use_keeps_the_session_alive(browser: TestClient) -> None:
    sign_in(browser, staff_user())
    idle = get_settings().console_session_idle
    start = now()
    with time_machine.travel(start + timedelta(seconds=idle - 60), tick=False):
        assert browser.get("/console/requests", follow_redirects=False).status_code == 200
    with time_machine.travel(start + timedelta(seconds=idle + 30), tick=False):
        assert browser.get("/console/requests", follow_redirects=False).status_code == 200
