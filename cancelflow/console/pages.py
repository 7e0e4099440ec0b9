"""The console's pages: sign-in and out, the requests list and a request's page.

Each page parses what it was sent, calls a service and renders a template: the list reads through
`services.queries` with the API's query-string parsing (`api.query_params`, `RequestFilters.parse`), a
request page through `services.request_view`. IBANs and e-mail addresses are masked as in the API unless
the user has `view_iban`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from cancelflow.api import query_params
from cancelflow.api.deps import DbSession
from cancelflow.console import views, web
from cancelflow.console.web import Staff, StaffPost, render
from cancelflow.db import transaction
from cancelflow.errors import Invalid, InvalidTransition, NotFound, Throttled, TransientError
from cancelflow.models import CancellationRequest
from cancelflow.models.enums import CancellationType, PlanStatus, RequestStatus
from cancelflow.services import cancellation_requests as requests_service
from cancelflow.services import console_sessions, iban, queries, request_view, tags, throttle
from cancelflow.services.console_sessions import SignedIn
from cancelflow.services.queries import RequestFilters

router = APIRouter(prefix=web.PREFIX, include_in_schema=False)

# The filter bar: (query parameter, label, input kind). Every one is a filter of the API's list (`tag`: of
# its `filter_by_tags/`).
FILTER_BAR: Final[Sequence[tuple[str, str, str]]] = (
    ("tag", "Tag", "text"),
    ("cancellation_plan_status", "Plan status", "plan_status"),
    ("cancellation_type", "Type", "type"),
    ("escalated", "Escalated", "bool"),
    ("order_number", "Order number", "text"),
    ("order__customer__email__iexact", "Customer e-mail", "text"),
    ("sku", "SKU", "text"),
    ("channel", "Channel id", "number"),
    ("reason", "Reason id", "number"),
    ("created_date__date__gte", "Created from", "date"),
    ("created_date__date__lte", "Created until", "date"),
    ("modified_date__date__gte", "Modified from", "date"),
    ("modified_date__date__lte", "Modified until", "date"),
)
CHOICES: Final[Mapping[str, Sequence[str]]] = {
    "plan_status": [s.value for s in PlanStatus],
    "type": [t.value for t in CancellationType],
    "bool": ["true", "false"],
}
PAGE_SIZE: Final = 25
# The status tabs under a filter are counted in one scan of up to this many matching rows, exact when the
# filter matches no more, else the planner's estimates ("~"). Without filters they are exact (the tally rows).
TAB_EXACT_COUNT: Final = 2000
MAX_ID: Final = web.MAX_ID
MAX_REASON: Final = 2000


# --- sign-in ------------------------------------------------------------------------------------------


def _login_page(
    request: Request, next_url: str, *, error: str | None = None, status_code: int = 200
) -> Response:
    token = web.login_token()
    response = render(
        request,
        "login.html",
        {"title": "Sign in", "next": next_url, "login_token": token, "error": error},
        status_code=status_code,
    )
    web.set_cookie(request, response, web.LOGIN_COOKIE, token)
    return response


@router.get("/", response_class=HTMLResponse)
def index() -> Response:
    return RedirectResponse(f"{web.PREFIX}/requests", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> Response:
    return _login_page(request, web.safe_next(next))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """The same check and throttle as `POST /api/v1/auth/login/` (`users.authenticate`), then a session."""
    form = await web.form_fields(request)
    username, password = form.get("username", "")[:1000], form.get("password", "")[:2000]
    login_token = form.get("login_token", "")
    next_url = web.safe_next(form.get("next"))
    expected = request.cookies.get(web.LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(expected.encode(), login_token.encode()):
        return _login_page(request, next_url, error="The sign-in form expired; try again.", status_code=403)
    client = request.client.host if request.client is not None else "unknown"

    def work() -> str:
        with transaction() as session:
            return console_sessions.sign_in(session, username, password, client=client)[0]

    try:
        key = await throttle.run_login(work)
    except Invalid:
        return _login_page(request, next_url, error="Wrong username or password.", status_code=400)
    except Throttled as exc:
        return _login_page(request, next_url, error=f"Too many attempts: {exc.message}", status_code=429)
    except TransientError:
        return _login_page(request, next_url, error="Sign-in is unavailable; try again.", status_code=503)
    response = RedirectResponse(next_url, status_code=303)
    web.no_store(response)
    web.set_cookie(request, response, web.COOKIE, key)
    response.delete_cookie(web.LOGIN_COOKIE, path=web.PREFIX + "/")
    return response


@router.post("/logout", response_class=HTMLResponse)
def logout(request: Request, who: StaffPost, session: DbSession) -> Response:
    console_sessions.sign_out(session, request.cookies.get(web.COOKIE))
    response = RedirectResponse(f"{web.PREFIX}/login", status_code=303)
    web.no_store(response)
    response.delete_cookie(web.COOKIE, path=web.PREFIX + "/", httponly=True, samesite="lax")
    return response


# --- the requests list --------------------------------------------------------------------------------


def _iban(value: str | None, who: SignedIn) -> str | None:
    return value if who.can_view_iban else iban.mask(value)


def _url(params: Mapping[str, str], **changes: Any) -> str:
    """`/console/requests` with the filter state and `changes` (None drops a parameter)."""
    merged: dict[str, Any] = {k: v for k, v in params.items() if v != ""}
    for name, value in changes.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    query = urlencode(merged)
    return f"{web.PREFIX}/requests" + (f"?{query}" if query else "")


def _page(
    session: Session,
    filters: RequestFilters,
    tag: str | None,
    page: int,
    limit: int,
    after: int | None = None,
    before: int | None = None,
    known_count: tuple[int, bool] | None = None,
) -> queries.Page:
    """A page of the list: `queries.list_requests` (newest first by a date the filters bound, else by
    id), or with a tag `tags.list_tagged` (the API's `filter_by_tags/`), under the same keyset rules."""
    if tag:
        return tags.list_tagged(
            session,
            filters,
            [tag],
            page=page,
            limit=limit,
            after=after,
            before=before,
            known_count=known_count,
        )
    return queries.list_requests(
        session, filters, page, limit, after=after, before=before, by_date=True, known_count=known_count
    )


def _status_counts(
    session: Session, filters: RequestFilters, tag: str | None
) -> list[tuple[str | None, int, bool]]:
    """(status or None for all, count, is_estimate) for the tabs, under the other filters."""
    per_status, (total, estimated) = queries.status_tabs(
        session, filters, tag=tag, exact_up_to=TAB_EXACT_COUNT
    )
    return [(None, total, estimated), *((s, n, e) for s, (n, e) in per_status.items())]


@router.get("/requests", response_class=HTMLResponse)
def requests_list(request: Request, who: Staff, session: DbSession) -> Response:
    sent = {k: v for k, v in request.query_params.items() if k in RequestFilters.model_fields or k == "tag"}
    tag = (sent.get("tag") or "").strip() or None
    filters = RequestFilters()
    errors: dict[str, list[str]] = {}
    page_number, after, before = 1, None, None
    try:
        filters = RequestFilters.parse(request.query_params.multi_items())
        page_number, _ = query_params.parse_page(request.query_params)
        after, before = query_params.parse_cursor(request.query_params)
        if tag is not None:
            tags.check_key_limits([tag], field="tag")
        if filters.iban is not None and not who.can_view_iban:
            raise Invalid(
                "iban", field_errors={"iban": ["Filtering by IBAN needs the view_iban permission."]}
            )
    except Invalid as exc:
        errors = exc.field_errors or {"filters": [exc.message]}
        filters, tag, page_number, after, before = RequestFilters(), None, 1, None, None
    tabs = _status_counts(session, filters, tag)
    shown = filters.status.value if filters.status else None
    counted = next((count, estimated) for status, count, estimated in tabs if status == shown)
    page = _page(session, filters, tag, page_number, PAGE_SIZE, after, before, known_count=counted)
    rows = [_row(detail, who) for detail in request_view.details(session, page.results)]
    state = {k: v for k, v in sent.items() if k not in ("page", "page_after", "page_before")}
    next_url = (
        _url(state, page=page.page + 1, page_after=page.results[-1].id)
        if page.has_next and page.results
        else None
    )
    previous_url = None
    if page.page == 2:
        previous_url = _url(state)
    elif page.has_previous and page.results:
        previous_url = _url(state, page=page.page - 1, page_before=page.results[0].id)
    context = {
        "title": "Cancellation requests",
        "who": who,
        "rows": rows,
        "page": page,
        "tabs": [(s, c, e, _url(state, status=s)) for s, c, e in tabs],
        "sorted_by": {"created_date": "created date", "modified_date": "modified date"}.get(
            getattr(queries.date_order(filters), "key", ""), ""
        ),
        "current_status": filters.status.value if filters.status else None,
        "filter_bar": FILTER_BAR,
        "choices": CHOICES,
        "state": state,
        "errors": errors,
        "next_url": next_url,
        "previous_url": previous_url,
        **views.list_context(session, who, state),
    }
    return render(request, "requests.html", context, status_code=400 if errors else 200)


def _row(detail: request_view.RequestDetail, who: SignedIn) -> dict[str, Any]:
    r: CancellationRequest = detail.request
    return {
        "id": r.id,
        "created": r.created_date,
        "status": r.status.value,
        "plan_status": detail.plan.status.value if detail.plan else None,
        "type": r.cancellation_type.value,
        "order_number": detail.order.number,
        "sku": detail.item.sku,
        "quantity": r.quantity,
        "email": web.masked(detail.customer.email, who),
        "reason": detail.reason.subject,
        "iban": _iban(r.iban, who),
    }


# --- one request --------------------------------------------------------------------------------------


@router.get("/requests/{request_id}", response_class=HTMLResponse)
def request_page(request: Request, request_id: int, who: Staff, session: DbSession) -> Response:
    # `shown`: the status the polling page shows; its decision forms are sent again only when it changed.
    return _request_page(request, request_id, who, session, shown=request.query_params.get("shown"))


def _request_page(
    request: Request,
    request_id: int,
    who: SignedIn,
    session: Session,
    *,
    error: str | None = None,
    status_code: int = 200,
    shown: str | None = None,
) -> Response:
    picture = request_view.picture(session, request_id) if 0 < request_id < MAX_ID else None
    if picture is None:
        return render(
            request,
            "error.html",
            {"title": "Not found", "who": who, "message": "No such request."},
            status_code=404,
        )
    detail = picture.detail
    context = {
        "title": f"Request {request_id}",
        "who": who,
        "row": _row(detail, who),
        "detail": detail,
        "customer_name": f"{detail.customer.first_name} {detail.customer.last_name}".strip(),
        "holder_name": web.masked(detail.request.holder_name, who),
        "rejection_message": web.masked(detail.request.rejection_message, who),
        "steps": [(s, web.masked(s.last_error, who)) for s in detail.steps],
        "fulfillment_orders": [
            (
                fo,
                [
                    (m, web.masked(m.message, who), web.masked(m.response_message, who))
                    for m in fo.merchant_requests
                ],
            )
            for fo in request_view.fulfillment_orders(session, picture.fulfillment_orders)
        ],
        "money": detail.money,
        "events": [
            (e, str(e.data.get("actor") or "system"), web.masked(_note(e.data), who)) for e in picture.events
        ],
        "tags": tags.keys_of(session, request_id),
        "error": error,
        "poll_seconds": web.POLL_SECONDS,
        "decision_changed": shown != detail.request.status.value,
    }
    return render(request, "request.html", context, status_code=status_code)


# --- actions on one request ---------------------------------------------------------------------------


async def _act(
    request: Request,
    request_id: int,
    who: SignedIn,
    session: Session,
    action: Callable[[dict[str, str]], None],
) -> Response:
    """Run one service call for the signed-in user; on success back to the request's page (303), on a
    refusal the page again with the service's message (nothing of the refused call is kept)."""
    form = await web.form_fields(request)
    if not 0 < request_id < MAX_ID:
        return _request_page(request, request_id, who, session)
    try:
        with session.begin_nested():
            action(form)
    except (Invalid, InvalidTransition, NotFound) as exc:
        code = 404 if isinstance(exc, NotFound) else 400
        messages = (
            [m for ms in (exc.field_errors or {}).values() for m in ms] if isinstance(exc, Invalid) else []
        )
        return _request_page(
            request, request_id, who, session, error=" ".join(messages) or exc.message, status_code=code
        )
    response = RedirectResponse(f"{web.PREFIX}/requests/{request_id}", status_code=303)
    web.no_store(response)
    return response


@router.post("/requests/{request_id}/approve", response_class=HTMLResponse)
async def approve(request: Request, request_id: int, who: StaffPost, session: DbSession) -> Response:
    """As `PATCH /api/v1/cancellation_requests/{id}/ {"status": "approved"}`."""

    def work(form: dict[str, str]) -> None:
        requests_service.update_request(
            session, request_id, {"status": RequestStatus.approved.value}, actor=who.actor, channel_id=None
        )

    return await _act(request, request_id, who, session, work)


@router.post("/requests/{request_id}/reject", response_class=HTMLResponse)
async def reject(request: Request, request_id: int, who: StaffPost, session: DbSession) -> Response:
    """As `POST /api/v1/cancellation_requests/{id}/reject/`, with the reason the user gave."""

    def work(form: dict[str, str]) -> None:
        reason = form.get("reason", "").strip()
        if not reason:
            raise Invalid("reason", field_errors={"reason": ["Say why the request is rejected."]})
        requests_service.reject(
            session, request_id, actor=who.actor, channel_id=None, message=reason[:MAX_REASON]
        )

    return await _act(request, request_id, who, session, work)


@router.post("/requests/{request_id}/tags", response_class=HTMLResponse)
async def add_tag(request: Request, request_id: int, who: StaffPost, session: DbSession) -> Response:
    """As `POST /api/v1/cancellation_requests/{id}/tags/`."""

    def work(form: dict[str, str]) -> None:
        key = form.get("key", "").strip()
        if not key:
            raise Invalid("key", field_errors={"key": ["Enter a tag."]})
        tags.add(session, request_id, [key])

    return await _act(request, request_id, who, session, work)


@router.post("/requests/{request_id}/tags/remove", response_class=HTMLResponse)
async def remove_tag(request: Request, request_id: int, who: StaffPost, session: DbSession) -> Response:
    """As `DELETE /api/v1/cancellation_requests/{id}/tags/`."""

    def work(form: dict[str, str]) -> None:
        tags.remove(session, request_id, [form.get("key", "")])

    return await _act(request, request_id, who, session, work)


def _note(data: Mapping[str, object]) -> str | None:
    for key in ("message", "reason", "error"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return None
