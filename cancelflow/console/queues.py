"""The console's work queues beyond dead steps: escalated plans and dead webhook deliveries.

Each queue lists through the same service as its CLI/API listing (`escalation.escalations`, as `cancelflow
escalations`; `webhooks.delivery.list_deliveries`, as `GET /api/v1/webhooks/deliveries/?status=dead`) and acts
through the same service as the API/CLI (`escalation.resolve` with the signed-in staff user as actor;
`webhooks.delivery.redeliver`). An action runs in a savepoint: a refusal keeps nothing and shows the
service's message on the queue's page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from cancelflow.api.deps import DbSession
from cancelflow.console import web
from cancelflow.console.pages import MAX_ID
from cancelflow.console.web import Staff, StaffPost, render
from cancelflow.errors import Conflict, Invalid, InvalidTransition, NotFound
from cancelflow.models.webhooks import DeliveryStatus
from cancelflow.services import escalation
from cancelflow.services.console_sessions import SignedIn
from cancelflow.services.webhooks import delivery as webhook_delivery

router = APIRouter(prefix=web.PREFIX, include_in_schema=False)

SHOWN: Final = 200
# (action, button text) in the order the buttons are shown; the actions are `escalation.RESOLUTIONS`.
RESOLUTION_BUTTONS: Final = (("cancel_locally", "Cancel locally"), ("reject", "Reject"), ("wait", "Wait"))
assert {a for a, _ in RESOLUTION_BUTTONS} == set(escalation.RESOLUTIONS)


def _run(
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
    response = RedirectResponse(f"{web.PREFIX}/{back}", status_code=303)
    web.no_store(response)
    return response


# --- escalations --------------------------------------------------------------------------------------


def _escalations_page(
    request: Request, who: SignedIn, session: Session, *, error: str | None = None, status_code: int = 200
) -> Response:
    context = {
        "title": "Escalations",
        "who": who,
        "rows": escalation.escalations(session, limit=SHOWN),
        "buttons": RESOLUTION_BUTTONS,
        "shown": SHOWN,
        "error": error,
    }
    return render(request, "escalations.html", context, status_code=status_code)


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
        session,
        work,
        back="escalations",
        page=lambda error, code: _escalations_page(request, who, session, error=error, status_code=code),
    )


# --- dead webhook deliveries --------------------------------------------------------------------------


def _deliveries_page(
    request: Request, who: SignedIn, session: Session, *, error: str | None = None, status_code: int = 200
) -> Response:
    dead = webhook_delivery.list_deliveries(session, status=DeliveryStatus.dead, limit=SHOWN)
    context = {
        "title": "Dead webhook deliveries",
        "who": who,
        "deliveries": [(d, web.masked(d.last_error, who)) for d in dead],
        "shown": SHOWN,
        "error": error,
    }
    return render(request, "deliveries.html", context, status_code=status_code)


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
        session,
        work,
        back="deliveries",
        page=lambda error, code: _deliveries_page(request, who, session, error=error, status_code=code),
    )
