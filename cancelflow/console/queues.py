"""The console's work queues: dead steps, escalated plans and dead webhook deliveries.

Each queue lists through the same service as its CLI/API listing (`replay.dead_steps_page`, as `cancelflow
dead`; `escalation.escalations_page`, as `cancelflow escalations`; `webhooks.delivery.dead_deliveries_page`, as
`GET /api/v1/webhooks/deliveries/?status=dead`), a page at a time with keyset cursors (`after` / `before` in the
URL, `services.keyset`), and acts through the same service as the API/CLI (`replay.replay_step` and
`escalation.resolve` with the signed-in staff user as actor; `webhooks.delivery.redeliver`). An action runs in a
savepoint: a refusal keeps nothing and shows the service's message on the queue's page; a success comes back
to the page it was taken from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from cancelflow.api.deps import DbSession
from cancelflow.console import web
from cancelflow.console.pages import MAX_ID
from cancelflow.console.web import Staff, StaffPost, render
from cancelflow.errors import Conflict, Invalid, InvalidTransition, NotFound
from cancelflow.services import escalation, keyset, replay
from cancelflow.services.console_sessions import SignedIn
from cancelflow.services.step_view import present_step
from cancelflow.services.webhooks import delivery as webhook_delivery

router = APIRouter(prefix=web.PREFIX, include_in_schema=False)

PAGE_SIZE: Final = 50
T = TypeVar("T")
# (action, button text) in the order the buttons are shown; the actions are `escalation.RESOLUTIONS`.
RESOLUTION_BUTTONS: Final = (("cancel_locally", "Cancel locally"), ("reject", "Reject"), ("wait", "Wait"))
assert {a for a, _ in RESOLUTION_BUTTONS} == set(escalation.RESOLUTIONS)


def _run(
    request: Request,
    session: Session,
    action: Callable[[], object],
    *,
    back: str,
    page: Callable[[str, int], Response],
) -> Response:
    """Run one service call in a savepoint: on success back to the queue (303), on a refusal the queue
    again with the service's message (404 for something missing, 400 for a bad form, 409 for
    a state that does not allow it)."""
    try:
        with session.begin_nested():
            action()
    except (Conflict, Invalid, InvalidTransition, NotFound) as exc:
        messages = (
            [m for ms in (exc.field_errors or {}).values() for m in ms] if isinstance(exc, Invalid) else []
        )
        code = 404 if isinstance(exc, NotFound) else 400 if isinstance(exc, Invalid) else 409
        return page(" ".join(messages) or exc.message, code)
    response = RedirectResponse(_link(back, request.query_params), status_code=303)
    web.no_store(response)
    return response


# --- paging -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Paging:
    """The links of a queue's page: the neighbours (None when there is none) and the first page (None on it)."""

    next_url: str | None
    previous_url: str | None
    first_url: str | None
    query: str  # this page's cursor, kept by its action forms so an action comes back here


class BadCursor(Exception):
    """A cursor no page link makes: the queue answers 400 with a link to its first page."""

    def __init__(self, message: str, first_url: str) -> None:
        super().__init__(message)
        self.message = message
        self.first_url = first_url


def _link(path: str, params: Mapping[str, str]) -> str:
    kept = {k: params[k] for k in ("after", "before") if params.get(k)}
    return f"{web.PREFIX}/{path}" + (f"?{urlencode(kept)}" if kept else "")


def _read_page(
    request: Request,
    path: str,
    cursor: keyset.Cursor,
    read: Callable[..., keyset.KeysetPage[T]],
) -> tuple[keyset.KeysetPage[T], Paging]:
    """The page of a queue the URL's `after` / `before` points at, and its links."""
    params = request.query_params
    try:
        after = cursor.read(params.get("after"), field="after")
        before = cursor.read(params.get("before"), field="before")
    except Invalid:
        raise BadCursor(
            "This page link is not valid; start again from the first page.", _link(path, {})
        ) from None
    if after is not None and before is not None:
        raise BadCursor(
            "A page link has after or before, not both; start again from the first page.", _link(path, {})
        )
    found = read(limit=PAGE_SIZE, after=after, before=before)
    here = after is not None or before is not None
    paging = Paging(
        next_url=_link(path, {"after": cursor.write(found.next_key)}) if found.next_key else None,
        previous_url=_link(path, {"before": cursor.write(found.previous_key)})
        if found.previous_key
        else None,
        first_url=_link(path, {}) if here else None,
        query=urlencode({k: params[k] for k in ("after", "before") if params.get(k)}),
    )
    return found, paging


def _queue_page(
    request: Request,
    who: SignedIn,
    template: str,
    read: Callable[[], dict[str, Any]],
    *,
    error: str | None,
    status_code: int,
) -> Response:
    try:
        values = read()
    except BadCursor as exc:
        return render(
            request,
            "error.html",
            {
                "title": "Bad page link",
                "who": who,
                "message": exc.message,
                "back_url": exc.first_url,
                "back_text": "First page",
            },
            status_code=400,
        )
    context = {"who": who, "error": error, "page_size": PAGE_SIZE, **values}
    return render(request, template, context, status_code=status_code)


# --- dead steps ---------------------------------------------------------------------------------------

TIME_ID_CURSOR: Final = keyset.Cursor(datetime, int)


def _dead_steps_page(
    request: Request, who: SignedIn, session: Session, *, error: str | None = None, status_code: int = 200
) -> Response:
    """Steps that exhausted their retries (the most recent death first), each with its last error and a
    replay button (`replay.replay_step`, as `cancelflow replay`)."""

    def context() -> dict[str, Any]:
        found, paging = _read_page(
            request,
            "dead-steps",
            TIME_ID_CURSOR,
            lambda **kw: replay.dead_steps_page(session, **kw),
        )
        dead = [present_step(step) for step in found.rows]
        return {
            "title": "Dead steps",
            "steps": [(step, web.masked(step.last_error, who)) for step in dead],
            "paging": paging,
        }

    return _queue_page(request, who, "dead_steps.html", context, error=error, status_code=status_code)


@router.get("/dead-steps", response_class=HTMLResponse)
def dead_steps(request: Request, who: Staff, session: DbSession) -> Response:
    return _dead_steps_page(request, who, session)


@router.post("/dead-steps/{step_id}/replay", response_class=HTMLResponse)
def replay_step(request: Request, step_id: int, who: StaffPost, session: DbSession) -> Response:
    """As `cancelflow replay STEP_ID`, the staff user as actor."""

    def work() -> None:
        if not 0 < step_id < MAX_ID:
            raise NotFound(f"step {step_id} not found")
        replay.replay_step(session, step_id, actor=who.actor)

    return _run(
        request,
        session,
        work,
        back="dead-steps",
        page=lambda error, code: _dead_steps_page(request, who, session, error=error, status_code=code),
    )


# --- escalations --------------------------------------------------------------------------------------


def _escalations_page(
    request: Request, who: SignedIn, session: Session, *, error: str | None = None, status_code: int = 200
) -> Response:
    def context() -> dict[str, Any]:
        found, paging = _read_page(
            request,
            "escalations",
            TIME_ID_CURSOR,
            lambda **kw: escalation.escalations_page(session, **kw),
        )
        return {"title": "Escalations", "rows": found.rows, "buttons": RESOLUTION_BUTTONS, "paging": paging}

    return _queue_page(request, who, "escalations.html", context, error=error, status_code=status_code)


@router.get("/escalations", response_class=HTMLResponse)
def escalations(request: Request, who: Staff, session: DbSession) -> Response:
    return _escalations_page(request, who, session)


@router.post("/escalations/{request_id}/resolve", response_class=HTMLResponse)
async def resolve(request: Request, request_id: int, who: StaffPost, session: DbSession) -> Response:
    """As `cancelflow escalations resolve REQUEST_ID --action …`, the staff user as actor."""
    action = (await web.form_fields(request)).get("action", "")

    def work() -> None:
        if not 0 < request_id < MAX_ID:
            raise NotFound(f"request {request_id} not found")
        escalation.resolve(session, request_id, action=action, actor=who.actor)

    return _run(
        request,
        session,
        work,
        back="escalations",
        page=lambda error, code: _escalations_page(request, who, session, error=error, status_code=code),
    )


# --- dead webhook deliveries --------------------------------------------------------------------------

DELIVERY_CURSOR: Final = keyset.Cursor(int)


def _deliveries_page(
    request: Request, who: SignedIn, session: Session, *, error: str | None = None, status_code: int = 200
) -> Response:
    def context() -> dict[str, Any]:
        found, paging = _read_page(
            request,
            "deliveries",
            DELIVERY_CURSOR,
            lambda **kw: webhook_delivery.dead_deliveries_page(session, **kw),
        )
        return {
            "title": "Dead webhook deliveries",
            "deliveries": [(d, web.masked(d.last_error, who)) for d in found.rows],
            "paging": paging,
        }

    return _queue_page(request, who, "deliveries.html", context, error=error, status_code=status_code)


@router.get("/deliveries", response_class=HTMLResponse)
def deliveries(request: Request, who: Staff, session: DbSession) -> Response:
    return _deliveries_page(request, who, session)


@router.post("/deliveries/{delivery_id}/redeliver", response_class=HTMLResponse)
def redeliver(request: Request, delivery_id: int, who: StaffPost, session: DbSession) -> Response:
    """As `POST /api/v1/webhooks/deliveries/{id}/redeliver/`."""

    def work() -> None:
        if not 0 < delivery_id < MAX_ID:
            raise NotFound(f"no webhook delivery {delivery_id}")
        webhook_delivery.redeliver(session, delivery_id)

    return _run(
        request,
        session,
        work,
        back="deliveries",
        page=lambda error, code: _deliveries_page(request, who, session, error=error, status_code=code),
    )
