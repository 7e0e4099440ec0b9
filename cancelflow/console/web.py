"""What every console page shares: templates, the session cookie, the CSRF check and the answers to a
missing session (a redirect to sign-in), a missing CSRF token (403) and every other error (an HTML page in
the console's layout, with the status code the API would answer but no detail of the failure)."""

from __future__ import annotations

import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import quote, urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from cancelflow import textcheck
from cancelflow.api.deps import DbSession
from cancelflow.config import get_settings
from cancelflow.db import transaction
from cancelflow.services import console_sessions
from cancelflow.services.console_sessions import SignedIn

COOKIE: Final = "cancelflow_console"
LOGIN_COOKIE: Final = "cancelflow_console_login"  # double-submit token of the sign-in form
CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "X-CSRF-Token"
POLL_HEADER: Final = "X-Console-Poll"  # sent by a page's own refresh (htmx polling)
POLL_SECONDS: Final = 3
PREFIX: Final = "/console"
MAX_ID: Final = 2**63  # ids are BIGINT: anything from here up names no row
# Pages load their own scripts, styles and images only, and post forms to themselves.
CONSOLE_CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

# The error pages: (title, message) by status code; anything else falls back on the nearest class (4xx, 5xx).
ERROR_PAGES: Final[Mapping[int, tuple[str, str]]] = {
    400: ("Bad request", "The console could not read this request."),
    403: ("Refused", "You may not do this."),
    404: ("Not found", "There is no such page or request in the console."),
    405: ("Not allowed", "This page cannot be used that way."),
    413: ("Too large", "What was sent is too large."),
    429: ("Too many requests", "Too many requests in a short time; wait a moment and try again."),
    500: (
        "Something went wrong",
        "The console could not complete this request. The problem has been logged; try again, or tell your "
        "administrator if it keeps happening.",
    ),
    503: ("Unavailable", "The console cannot reach its database just now; try again shortly."),
}

log = logging.getLogger(__name__)
Handler = Callable[[Request, Exception], Response | Awaitable[Response]]

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


class SignInRequired(Exception):
    """No live session: the browser is sent to the sign-in page, then back to `next`."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


class CsrfRefused(Exception):
    """A state-changing request without the session's CSRF token."""


def secure(request: Request) -> bool:
    """Cookies are `Secure` when the request came over https (the scheme uvicorn sets from
    X-Forwarded-Proto for the proxies of `CANCELFLOW_FORWARDED_ALLOW_IPS`)."""
    return request.url.scheme == "https"


def set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(name, value, httponly=True, samesite="lax", secure=secure(request), path=PREFIX + "/")


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if not value:
        return PREFIX + "/requests"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith(PREFIX + "/") or "\\" in value:
        return PREFIX + "/requests"
    return value


def signed_in(request: Request, session: DbSession) -> SignedIn:
    idle = timedelta(seconds=get_settings().console_session_idle)
    # A page refreshing itself is not the user at work: it does not keep an idle session alive.
    touch = request.headers.get(POLL_HEADER) is None
    found = console_sessions.resume(session, request.cookies.get(COOKIE), idle=idle, touch=touch)
    if found is None:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(path)
    return found


Staff = Annotated[SignedIn, Depends(signed_in)]


async def csrf_checked(request: Request, who: Staff) -> SignedIn:
    """The session, once the request proved it came from a console page: the CSRF token in the
    `X-CSRF-Token` header (htmx) or the `csrf_token` form field, equal to the session's."""
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        sent = (await form_fields(request)).get(CSRF_FIELD)
    if not who.csrf_matches(sent):
        raise CsrfRefused
    return who


StaffPost = Annotated[SignedIn, Depends(csrf_checked)]


async def form_fields(request: Request) -> dict[str, str]:
    """The text fields of a posted form; a value PostgreSQL could not store (NUL, a lone surrogate)
    is dropped, so it is treated as missing (the body's size is limited by `api.limits`)."""
    form = await request.form()
    return {
        name: value
        for name, value in form.multi_items()
        if isinstance(value, str) and textcheck.problem(value) is None
    }


def render(
    request: Request, template: str, context: dict[str, Any], *, status_code: int = 200
) -> HTMLResponse:
    response = templates.TemplateResponse(request, template, context, status_code=status_code)
    no_store(response)
    return response


def no_store(response: Response) -> None:
    response.headers["Content-Security-Policy"] = CONSOLE_CSP
    response.headers["Cache-Control"] = "no-store"


def login_token() -> str:
    return secrets.token_urlsafe(32)


def install_handlers(app: FastAPI) -> None:
    async def to_sign_in(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequired)
        response = RedirectResponse(f"{PREFIX}/login?next={quote(exc.next_url, safe='')}", status_code=303)
        no_store(response)
        return response

    async def refused(request: Request, exc: Exception) -> Response:
        return error_page(
            request,
            403,
            message="This form has expired or did not come from the console. Reload the page and try again.",
        )

    # Installed after the API's own handlers: on a console path each answers an HTML page instead of JSON.
    for exc_class, handler in list(app.exception_handlers.items()):
        app.add_exception_handler(exc_class, _html_on_console(handler))
    app.add_exception_handler(SignInRequired, to_sign_in)
    app.add_exception_handler(CsrfRefused, refused)


def is_console(request: Request) -> bool:
    path = request.url.path
    return path == PREFIX or path.startswith(PREFIX + "/")


def _html_on_console(api_handler: Handler) -> Callable[[Request, Exception], Awaitable[Response]]:
    """The API's handler for an exception, whose status code (and headers, such as `Retry-After`) an
    error page of the console keeps, with a fixed message by status: nothing of the exception is shown."""

    async def handler(request: Request, exc: Exception) -> Response:
        answer = api_handler(request, exc)
        if inspect.isawaitable(answer):
            answer = await answer
        if not is_console(request):
            return answer
        page = error_page(request, answer.status_code)
        for name in ("Retry-After", "Allow"):
            if name in answer.headers:
                page.headers[name] = answer.headers[name]
        return page

    return handler


def error_page(request: Request, status_code: int, *, message: str | None = None) -> HTMLResponse:
    """The console's page for an error: its layout (with the navigation when a live session is known), the
    status's title and message, and a link back to the requests."""
    title, text = ERROR_PAGES.get(status_code) or ERROR_PAGES[500 if status_code >= 500 else 400]
    return render(
        request,
        "error.html",
        {"title": title, "message": message or text, "who": _who(request) if status_code < 500 else None},
        status_code=status_code,
    )


def _who(request: Request) -> SignedIn | None:
    """The signed-in user of an error page's request, without moving the session's last use; None when there
    is none or it cannot be read (an error page never fails for want of the navigation)."""
    key = request.cookies.get(COOKIE)
    if not key:
        return None
    idle = timedelta(seconds=get_settings().console_session_idle)
    try:
        with transaction() as session:
            return console_sessions.resume(session, key, idle=idle, touch=False)
    except Exception:  # the page is shown without its navigation
        log.warning("console error page: the session could not be read", exc_info=True)
        return None


def masked(value: str | None, who: SignedIn) -> str | None:
    """Free text as the reader may see it: IBANs and e-mail addresses masked unless they have `view_iban`."""
    from cancelflow.config.logging import mask_text

    return value if value is None or who.can_view_iban else mask_text(value)
