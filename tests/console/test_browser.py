"""The console in a real browser: the system Chromium driven by Playwright against a running stack (API,
worker, beat, sandbox services), with axe-core checking every page for serious or critical problems.
Screenshots of each page are saved under test-output/<test>/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cancelflow.db import transaction
from cancelflow.services import approval
from cancelflow.services.locking import get_request
from tests.console.support import PASSWORD, staff_user
from tests.factories import new_order, new_request, token_key
from tests.harness import Stack, clean_workdir, running

pytestmark = pytest.mark.worker

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def stack(database: str) -> Iterator[Stack]:
    """A running stack whose requests wait for staff (manual approval), so the pages can act on them."""
    overrides = {"CANCELFLOW_APPROVAL_RULE": "manual"}
    with running(Stack(clean_workdir("stack-console"), env_overrides=overrides)) as stack:
        yield stack


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Chromium is missing: `apt-get update && apt-get install chromium` (CI installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def fresh(chromium: Any, stack: Stack) -> Iterator[Any]:
    """A new browser context (its own cookies) opening pages of the stack's API."""
    contexts: list[Any] = []

    def open_context(**options: Any) -> Any:
        context = chromium.new_context(base_url=stack.api_url, **options)
        contexts.append(context)
        return context

    yield open_context
    for context in contexts:
        context.close()


def check_page(page: Any, output_dir: Path, name: str) -> None:
    """No serious or critical axe-core violation on the page; a screenshot of it under test-output/."""
    from axe_playwright_python.sync_playwright import Axe

    page.screenshot(path=str(output_dir / f"{name}.png"), full_page=True)
    results = Axe().run(page)
    bad = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, results.generate_report()


def sign_in(page: Any, username: str, password: str = PASSWORD) -> None:
    """Sign in with the keyboard only: the username field has focus, Tab to the password, Enter."""
    page.get_by_label("Username").wait_for()
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    page.keyboard.press("Enter")
    page.wait_for_load_state()


def row_ids(page: Any) -> list[str]:
    return [str(a.inner_text()) for a in page.get_by_role("table").locator("tbody a").all()]


def test_sign_in_filter_and_share_the_url(fresh: Any, output_dir: Path) -> None:
    name = staff_user()
    order = new_order(quantity=3)
    made = [new_request(order, quantity=1).id for _ in range(2)]
    page = fresh().new_page()
    page.goto("/console/requests")
    assert "/console/login" in page.url
    check_page(page, output_dir, "sign-in")

    sign_in(page, name, "not the password")
    assert page.get_by_role("alert").inner_text() == "Wrong username or password."
    check_page(page, output_dir, "sign-in-refused")

    sign_in(page, name)
    page.get_by_role("heading", name="Cancellation requests").wait_for()
    assert page.url.endswith("/console/requests")
    check_page(page, output_dir, "requests")

    page.get_by_label("Order number").fill(order.order.number)
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url(re.compile(r"order_number="))
    assert row_ids(page) == [str(i) for i in reversed(made)]
    check_page(page, output_dir, "requests-filtered")
    shared = page.url

    # The link alone carries the filter: another browser signs in and sees the same rows.
    other = fresh().new_page()
    other.goto(shared)
    sign_in(other, staff_user())
    other.wait_for_url(shared)
    assert row_ids(other) == row_ids(page)
    assert other.get_by_label("Order number").input_value() == order.order.number


def test_the_request_page_shows_the_timeline(fresh: Any, output_dir: Path) -> None:
    request = new_request()
    with transaction() as session:
        approval.approve(session, get_request(session, request.id), actor="staff (user:7)")
    page = fresh().new_page()
    page.goto(f"/console/requests/{request.id}")
    sign_in(page, staff_user())
    page.get_by_role("heading", name="Timeline").wait_for()
    timeline = page.get_by_role("region", name="Timeline")
    assert "waiting → approved" in timeline.inner_text()
    assert "by staff (user:7)" in timeline.inner_text()
    check_page(page, output_dir, "request")


def test_the_request_page_follows_the_workflow_without_reloading(fresh: Any, output_dir: Path) -> None:
    request = new_request()
    page = fresh().new_page()
    page.goto(f"/console/requests/{request.id}")
    sign_in(page, staff_user())
    page.get_by_role("heading", name="Timeline").wait_for()
    page.evaluate("window.notReloaded = true")
    with transaction() as session:
        approval.approve(session, get_request(session, request.id), actor="staff (user:8)")
    # The stack's worker carries the request to the end; the page refreshes its part by itself.
    page.get_by_text("approved → completed").wait_for(timeout=60_000)
    assert page.evaluate("window.notReloaded") is True
    assert page.get_by_role("status").inner_text() == "Status completed, plan completed"
    check_page(page, output_dir, "request-completed")


def test_a_post_without_the_csrf_token_is_refused(fresh: Any, output_dir: Path) -> None:
    context = fresh()
    page = context.new_page()
    page.goto("/console/requests")
    sign_in(page, staff_user())
    page.get_by_role("heading", name="Cancellation requests").wait_for()
    answer = context.request.post("/console/logout", max_redirects=0)
    assert answer.status == 403
    page.reload()
    assert page.get_by_role("heading", name="Cancellation requests").is_visible()  # still signed in


def test_a_storefront_token_is_refused(fresh: Any, output_dir: Path) -> None:
    key = token_key("storefront")
    page = fresh(extra_http_headers={"Authorization": f"Token {key}"}).new_page()
    page.goto("/console/requests")
    assert "/console/login" in page.url
    page.get_by_role("heading", name="Sign in").wait_for()


def test_logout_then_pages_ask_to_sign_in(fresh: Any, output_dir: Path) -> None:
    page = fresh().new_page()
    page.goto("/console/requests")
    sign_in(page, staff_user())
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Dead steps").click()
    page.get_by_role("heading", name="Dead steps").wait_for()
    check_page(page, output_dir, "dead-steps")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/console/login"))
    page.goto("/console/requests")
    assert "/console/login" in page.url
    page.get_by_role("heading", name="Sign in").wait_for()
    check_page(page, output_dir, "signed-out")


def test_tag_approve_and_reject_from_the_request_page(fresh: Any, output_dir: Path) -> None:
    waiting, other = new_request(), new_request()
    page = fresh().new_page()
    page.goto(f"/console/requests/{waiting.id}")
    sign_in(page, staff_user())
    actions = page.get_by_role("region", name="Actions")
    actions.get_by_label("New tag").fill("call-back")
    actions.get_by_role("button", name="Add tag").click()
    page.get_by_role("button", name="Remove tag call-back").wait_for()
    check_page(page, output_dir, "request-waiting")

    page.get_by_role("button", name="Approve").click()
    page.get_by_text("waiting → approved").wait_for()
    assert "by staff (user:" in page.get_by_role("region", name="Timeline").inner_text()

    page.get_by_role("button", name="Remove tag call-back").click()
    page.get_by_text("No tags.").wait_for()

    page.goto(f"/console/requests/{other.id}")
    page.get_by_label("Reason for rejecting").fill("customer withdrew the request by phone")
    page.get_by_role("button", name="Reject").click()
    page.get_by_text("customer withdrew the request by phone").first.wait_for()
    assert "rejected" in page.get_by_role("heading", level=1).inner_text()
    assert "waiting → rejected by staff (user:" in page.get_by_role("region", name="Timeline").inner_text()
    check_page(page, output_dir, "request-rejected")


def test_the_overview_and_the_work_queues_pass_axe(fresh: Any, output_dir: Path) -> None:
    """Every page of the navigation, reached by its link: no serious or critical axe-core problem."""
    new_request()
    page = fresh().new_page()
    page.goto("/console/overview")
    sign_in(page, staff_user())
    page.get_by_role("heading", name="Overview").wait_for()
    chart = page.get_by_role("img", name="Requests created and completed per hour over the last 7 days")
    assert chart.count() == 1
    check_page(page, output_dir, "overview")
    nav = page.get_by_role("navigation", name="Main")
    for link, heading, shot in (
        ("Escalations", "Escalations", "escalations"),
        ("Dead deliveries", "Dead webhook deliveries", "deliveries"),
        ("Dead steps", "Dead steps", "dead-steps"),
    ):
        nav.get_by_role("link", name=link).click()
        page.get_by_role("heading", name=heading).wait_for()
        assert nav.get_by_role("link", name=link).get_attribute("aria-current") == "page"
        check_page(page, output_dir, shot)
