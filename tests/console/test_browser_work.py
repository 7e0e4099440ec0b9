"""A support agent's day in the console, in the system Chromium against a running stack (API, worker, beat,
sandbox fulfillment service and gateway): the warehouse told of a rejection, the page following the warehouse
and the money by itself, keyboard-only decisions, the work queues' actions, saved views, error pages, and
the refusals (no CSRF token, an API token). axe-core checks every page; screenshots go to test-output/<test>/.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from cancelflow.db import transaction
from cancelflow.models import CancellationPlan, CancellationRequest, Event
from cancelflow.models.enums import RequestStatus
from cancelflow.services import approval
from cancelflow.services.locking import get_request
from tests.console.support import staff_user
from tests.console.test_browser import check_page, chromium, fresh, sign_in, stack
from tests.factories import new_order, new_request, token_key
from tests.harness import Stack, wait_for
from tests.unit.test_replay import dead_route_step
from tests.workflow.conftest import make_service

pytestmark = pytest.mark.worker

__all__ = ["chromium", "fresh", "stack"]  # the stack and browser fixtures of the console's browser tests

API_VERSION = "2021-07"


def tab_to(page: Any, what: str, test: str, *, limit: int = 60) -> None:
    """Press Tab until the focused element passes `test` (a JavaScript expression over `el`)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(f"(() => {{ const el = document.activeElement; return !!el && ({test}); }})()"):
            return
    raise AssertionError(f"Tab never reached {what}")


def status_of(request_id: int) -> RequestStatus:
    with transaction() as session:
        return session.get_one(CancellationRequest, request_id).status


def events_of(request_id: int) -> list[str]:
    with transaction() as session:
        return list(
            session.scalars(
                select(Event.kind)
                .where(Event.entity == "request", Event.entity_id == request_id)
                .order_by(Event.id)
            )
        )


def shop(stack: Stack, token: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """The shop's Admin API as the fulfillment service calls it, with its own token."""
    return httpx.request(
        method,
        f"{stack.api_url}/admin/api/{API_VERSION}{path}",
        headers={"X-Shopify-Access-Token": token},
        timeout=10,
        **kwargs,
    )


def test_reject_at_the_warehouse_withdraws_its_request_by_keyboard_only(
    stack: Stack, fresh: Any, output_dir: Any
) -> None:
    service = make_service(stack, policy="never")  # the warehouse pulls the request, then stays silent
    order = new_order(service_handle=service.handle)
    fo_id = order.fulfillment_orders[0].id
    request = new_request(order)
    page = fresh().new_page()
    page.goto(f"/console/requests/{request.id}")
    sign_in(page, staff_user())
    page.get_by_role("heading", name="Actions").wait_for()

    # Tab reaches the Approve button, Enter presses it; the worker asks the warehouse to cancel.
    tab_to(page, "Approve", "el.tagName === 'BUTTON' && el.textContent.trim() === 'Approve'")
    page.keyboard.press("Enter")
    fos = page.get_by_role("region", name="Fulfillment orders")
    fos.get_by_text("cancellation request cancellation_requested").wait_for(timeout=60_000)
    wait_for(
        lambda: any(
            e["fulfillment_order_id"] == fo_id and e["action"] == "ignored"
            for e in httpx.get(f"{stack.fulfillment_url}/_admin/log", timeout=5).json()
        ),
        timeout=60,
        what="the sandbox warehouse pulled the cancellation request",
    )
    assert f"at {service.handle}" in fos.inner_text()
    check_page(page, output_dir, "request-at-the-warehouse")

    # Tab to the reason, type it, Enter submits the reject form.
    tab_to(page, "the reason for rejecting", "el.id === 'reject-reason'")
    page.keyboard.type("customer kept the order after all")
    page.keyboard.press("Enter")
    timeline = page.get_by_role("region", name="Timeline")
    timeline.get_by_text("fulfillment_order.cancellation_withdrawn").wait_for()
    text = timeline.inner_text()
    assert f"fulfillment_order.cancellation_rejected (fulfillment order {fo_id})" in text
    assert "cancellation_requested/in_progress → cancellation_rejected/in_progress" in text
    assert "approved → rejected by staff (user:" in text
    assert "customer kept the order after all" in text
    assert "answer withdrawn" in fos.inner_text()
    check_page(page, output_dir, "request-withdrawn")

    # The warehouse sees it through the shop's API: the request is closed, the work stays with it, and a
    # late accept is refused.
    seen = shop(stack, service.token, "GET", f"/fulfillment_orders/{fo_id}.json")
    assert seen.status_code == 200
    assert (
        seen.json()["fulfillment_order"]["request_status"],
        seen.json()["fulfillment_order"]["status"],
    ) == (
        "cancellation_rejected",
        "in_progress",
    )
    asked = shop(
        stack,
        service.token,
        "GET",
        "/assigned_fulfillment_orders.json",
        params={"assignment_status": "cancellation_requested"},
    )
    assert fo_id not in [fo["id"] for fo in asked.json()["fulfillment_orders"]]
    late = shop(
        stack,
        service.token,
        "POST",
        f"/fulfillment_orders/{fo_id}/cancellation_request/accept.json",
        json={"cancellation_request": {"message": "too late"}},
    )
    assert late.status_code == 422
    assert status_of(request.id) == RequestStatus.rejected


def test_the_page_follows_the_warehouse_reply_and_the_money_without_reloading(
    stack: Stack, fresh: Any, output_dir: Any
) -> None:
    service = make_service(stack, policy="accept_after", delay_seconds=2)
    order = new_order(service_handle=service.handle)
    request = new_request(order)
    page = fresh().new_page()
    page.goto(f"/console/requests/{request.id}")
    sign_in(page, staff_user())
    page.get_by_role("heading", name="Timeline").wait_for()
    page.evaluate("window.notReloaded = true")
    with transaction() as session:
        approval.approve(session, get_request(session, request.id), actor="staff (user:9)")
    timeline = page.get_by_role("region", name="Timeline")
    timeline.get_by_text("fulfillment_order.cancellation_accepted").wait_for(timeout=60_000)
    assert re.search(
        r"cancellation_accepted \(fulfillment order \d+\).*by fulfillment service \(service:\d+\)",
        timeline.inner_text(),
    )
    assert (
        "answer accepted: “Accepted by sandbox”"
        in page.get_by_role("region", name="Fulfillment orders").inner_text()
    )
    timeline.get_by_text("money.moved").wait_for(timeout=60_000)
    money = page.get_by_role("region", name="Money")
    assert "No money moved yet." not in money.inner_text()
    assert "TRY" in money.inner_text() or "try" in money.inner_text()
    page.get_by_text("approved → completed").wait_for(timeout=60_000)
    # The heading and the decision forms follow too: a completed request offers no approve or reject.
    page.get_by_role("heading", level=1).get_by_text("completed").wait_for()
    page.get_by_role("button", name="Reject").wait_for(state="detached")
    assert page.get_by_role("button", name="Approve").count() == 0
    assert page.evaluate("window.notReloaded") is True
    check_page(page, output_dir, "request-accepted-and-refunded")


def test_replay_a_dead_step_from_its_queue(fresh: Any, output_dir: Any) -> None:
    with transaction() as session:
        plan, step = dead_route_step(session)
        step_id, request_id = step.id, plan.request_id
    page = fresh().new_page()
    page.goto("/console/dead-steps")
    sign_in(page, staff_user())
    page.get_by_role("heading", name="Dead steps").wait_for()
    replay = page.get_by_role("button", name=f"Replay step {step_id}")
    check_page(page, output_dir, "dead-steps")
    replay.click()
    replay.wait_for(state="detached")
    assert page.get_by_role("heading", name="Dead steps").is_visible()
    page.goto(f"/console/requests/{request_id}")
    timeline = page.get_by_role("region", name="Timeline").inner_text()
    assert re.search(r"failed → waiting by staff \(user:\d+\)", timeline), timeline


def test_resolve_an_escalation_from_its_queue(stack: Stack, fresh: Any, output_dir: Any) -> None:
    # A silent warehouse with a 1-second reply deadline: the stack's beat escalates the plan.
    service = make_service(
        stack, policy="never", deadline_action="escalate", deadline_seconds=1, reminder_count=0
    )
    request = new_request(new_order(service_handle=service.handle))
    with transaction() as session:
        approval.approve(session, get_request(session, request.id), actor="staff (user:10)")
    wait_for(lambda: escalated(request.id), timeout=90, what="the plan escalated at its reply deadline")
    page = fresh().new_page()
    page.goto("/console/escalations")
    sign_in(page, staff_user())
    page.get_by_role("heading", name="Escalations").wait_for()
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=str(request.id), exact=True))
    assert service.handle in row.inner_text()
    check_page(page, output_dir, "escalations")
    row.get_by_role("button", name=f"Reject: request {request.id}").click()
    page.get_by_role("link", name=str(request.id), exact=True).wait_for(state="detached")
    page.goto(f"/console/requests/{request.id}")
    assert "rejected" in page.get_by_role("heading", level=1).inner_text()
    timeline = page.get_by_role("region", name="Timeline").inner_text()
    assert "plan.escalated" in timeline
    assert re.search(r"confirmation_waiting → rejected by staff \(user:\d+\)", timeline), timeline
    check_page(page, output_dir, "request-escalation-rejected")


def escalated(request_id: int) -> bool:
    with transaction() as session:
        plan = session.scalars(
            select(CancellationPlan).where(CancellationPlan.request_id == request_id)
        ).one_or_none()
        return plan is not None and plan.escalated_at is not None


def test_an_action_without_the_csrf_token_or_with_an_api_token_is_refused(
    fresh: Any, output_dir: Any
) -> None:
    request = new_request()
    before = events_of(request.id)
    context = fresh()
    page = context.new_page()
    page.goto(f"/console/requests/{request.id}")
    sign_in(page, staff_user())
    page.get_by_role("button", name="Approve").wait_for()
    approve = f"/console/requests/{request.id}/approve"
    assert context.request.post(approve, max_redirects=0).status == 403
    forged = context.request.post(approve, form={"csrf_token": "not-the-token"}, max_redirects=0)
    assert forged.status == 403
    assert "<h1>Refused</h1>" in forged.text()
    # A form that lost its token (a plain post: the sign-out form) gets the refusal as a page of the console.
    page.locator("form.signout input[name=csrf_token]").evaluate("input => input.remove()")
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("heading", name="Refused").wait_for()
    assert page.get_by_role("alert").inner_text().startswith("This form has expired")
    check_page(page, output_dir, "refused")
    page.goto("/console/requests")
    page.get_by_role("heading", name="Cancellation requests").wait_for()  # still signed in
    assert status_of(request.id) == RequestStatus.waiting

    # API tokens (a storefront's, a fulfillment service's) open no page and move nothing.
    for headers in (
        {"Authorization": f"Token {token_key('storefront')}"},
        {"Authorization": f"Bearer {token_key('storefront')}"},
    ):
        outsider = fresh(extra_http_headers=headers)
        for path in (
            "/console/requests",
            f"/console/requests/{request.id}",
            "/console/dead-steps",
            "/console/views",
        ):
            answer = outsider.request.get(path, max_redirects=0)
            assert (answer.status, answer.headers["location"].split("?")[0]) == (303, "/console/login")
        refused = outsider.request.post(approve, form={"csrf_token": "x"}, max_redirects=0)
        assert (refused.status, refused.headers["location"].split("?")[0]) == (303, "/console/login")
    assert status_of(request.id) == RequestStatus.waiting
    assert events_of(request.id) == before


def test_save_open_rename_and_delete_a_view(fresh: Any, output_dir: Any) -> None:
    order = new_order(quantity=3)
    made = [new_request(order, quantity=1).id for _ in range(2)]
    page = fresh().new_page()
    page.goto("/console/requests")
    sign_in(page, staff_user())
    page.get_by_label("Order number").fill(order.order.number)
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url(re.compile(r"order_number="))
    page.get_by_label("Name for these filters").fill("Two for the desk")
    page.get_by_role("button", name="Save view").click()
    views = page.get_by_role("navigation", name="Saved views")
    link = views.get_by_role("link", name="Two for the desk")
    link.wait_for()
    assert link.get_attribute("aria-current") == "page"
    check_page(page, output_dir, "requests-with-a-saved-view")

    # From the unfiltered list, the saved view opens the filtered rows again.
    page.get_by_role("link", name="Clear filters").click()
    page.get_by_role("navigation", name="Saved views").get_by_role("link", name="Two for the desk").click()
    page.wait_for_url(f"**/console/requests?order_number={order.order.number}")
    assert [page.get_by_role("table").locator("tbody a").nth(i).inner_text() for i in range(2)] == [
        str(i) for i in reversed(made)
    ]

    page.get_by_role("link", name="Manage saved views").click()
    page.get_by_role("heading", name="Saved views").wait_for()
    check_page(page, output_dir, "saved-views")
    page.get_by_label("New name for Two for the desk").fill("Desk pair")
    page.get_by_role("button", name="Rename Two for the desk").click()
    page.get_by_role("link", name="Desk pair").wait_for()
    page.get_by_role("button", name="Delete Desk pair").click()
    page.get_by_text("No saved view yet.").wait_for()
    check_page(page, output_dir, "saved-views-empty")


def test_error_pages_keep_the_console_and_lead_back(fresh: Any, output_dir: Any) -> None:
    page = fresh().new_page()
    page.goto("/console/requests")
    sign_in(page, staff_user())
    page.get_by_role("heading", name="Cancellation requests").wait_for()
    answer = page.goto("/console/requests/987654321012")
    assert answer is not None
    assert answer.status == 404
    page.get_by_role("heading", name="Not found").wait_for()
    assert page.get_by_role("navigation", name="Main").is_visible()
    check_page(page, output_dir, "not-found")
    page.get_by_role("link", name="Back to the requests").click()
    page.get_by_role("heading", name="Cancellation requests").wait_for()

    answer = page.goto("/console/requests?created_date__date__gte=someday")
    assert answer is not None
    assert answer.status == 400
    assert page.get_by_role("alert").first.is_visible()
    check_page(page, output_dir, "bad-filter")

    answer = page.goto("/console/dead-steps?after=nonsense")
    assert answer is not None
    assert answer.status == 400
    page.get_by_role("heading", name="Bad page link").wait_for()
    check_page(page, output_dir, "bad-page-link")
    page.get_by_role("link", name="First page").click()
    page.get_by_role("heading", name="Dead steps").wait_for()
