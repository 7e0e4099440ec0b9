"""Saved views of the requests list: each staff user names filter states of the list and opens them again.

The list shows the user's views and a form to save the current state (`list_context`, template
`_saved_views.html`); `/console/views` lists them to open, rename or delete. Every change is a CSRF-checked
post calling `services.saved_views`, in a savepoint: a refusal keeps nothing and shows its message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from cancelflow.api.deps import DbSession
from cancelflow.console import web
from cancelflow.console.web import MAX_ID, Staff, StaffPost, render
from cancelflow.errors import Invalid, NotFound
from cancelflow.services import saved_views
from cancelflow.services.console_sessions import SignedIn

router = APIRouter(prefix=web.PREFIX, include_in_schema=False)


def _list_url(query: str) -> str:
    return f"{web.PREFIX}/requests" + (f"?{query}" if query else "")


def list_context(session: Session, who: SignedIn, state: Mapping[str, str]) -> dict[str, Any]:
    """What the requests list shows of the user's views: each with its link (the one matching the list's
    state marked current), and the state a new view would keep."""
    try:
        current: str | None = saved_views.clean_query(state.items())
    except Invalid:
        current = None
    views = saved_views.list_views(session, who.user.id)
    return {
        "saved_views": [(v.name, _list_url(v.query), v.query == current) for v in views],
        "view_query": current,
    }


def _views_page(
    request: Request, who: SignedIn, session: Session, *, error: str | None = None, status_code: int = 200
) -> Response:
    views = saved_views.list_views(session, who.user.id)
    context = {
        "title": "Saved views",
        "who": who,
        "views": [(v, _list_url(v.query)) for v in views],
        "error": error,
    }
    return render(request, "saved_views.html", context, status_code=status_code)


@router.get("/views", response_class=HTMLResponse)
def views_page(request: Request, who: Staff, session: DbSession) -> Response:
    return _views_page(request, who, session)


@router.get("/views/{view_id}", response_class=HTMLResponse)
def open_view(request: Request, view_id: int, who: Staff, session: DbSession) -> Response:
    """A view's own address: the requests list with its filters."""
    if not 0 < view_id < MAX_ID:
        raise NotFound(f"no saved view {view_id}")
    view = saved_views.get(session, who.user.id, view_id)
    response = RedirectResponse(_list_url(view.query), status_code=303)
    web.no_store(response)
    return response


def _change(
    request: Request,
    who: SignedIn,
    session: Session,
    action: Callable[[], str],
) -> Response:
    """Run one change in a savepoint; on success to the URL it returns (303), on a refusal the views page
    with the service's message (404 for a view that is not the user's, 400 for a bad name or filter)."""
    try:
        with session.begin_nested():
            target = action()
    except (Invalid, NotFound) as exc:
        messages = (
            [m for ms in (exc.field_errors or {}).values() for m in ms] if isinstance(exc, Invalid) else []
        )
        code = 404 if isinstance(exc, NotFound) else 400
        text = " ".join(messages) or ("No such saved view." if code == 404 else exc.message)
        return _views_page(request, who, session, error=text, status_code=code)
    response = RedirectResponse(target, status_code=303)
    web.no_store(response)
    return response


@router.post("/views", response_class=HTMLResponse)
async def save_view(request: Request, who: StaffPost, session: DbSession) -> Response:
    """Save the list's filter state (the `query` field, as the list's URL has it) under a name; then the list
    with that view open."""
    form = await web.form_fields(request)

    def work() -> str:
        params = parse_qsl(form.get("query", ""), keep_blank_values=True)
        view = saved_views.save(session, who.user.id, form.get("name", ""), params)
        return _list_url(view.query)

    return _change(request, who, session, work)


@router.post("/views/{view_id}/rename", response_class=HTMLResponse)
async def rename_view(request: Request, view_id: int, who: StaffPost, session: DbSession) -> Response:
    form = await web.form_fields(request)

    def work() -> str:
        if not 0 < view_id < MAX_ID:
            raise NotFound(f"no saved view {view_id}")
        saved_views.rename(session, who.user.id, view_id, form.get("name", ""))
        return f"{web.PREFIX}/views"

    return _change(request, who, session, work)


@router.post("/views/{view_id}/delete", response_class=HTMLResponse)
def delete_view(request: Request, view_id: int, who: StaffPost, session: DbSession) -> Response:
    def work() -> str:
        if not 0 < view_id < MAX_ID:
            raise NotFound(f"no saved view {view_id}")
        saved_views.delete(session, who.user.id, view_id)
        return f"{web.PREFIX}/views"

    return _change(request, who, session, work)
