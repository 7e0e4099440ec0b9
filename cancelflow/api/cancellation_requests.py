"""Akinon Omnitron cancellation requests (seed 000): list, detailed list, retrieve, create, update, reject.

Two routers with the same operations, each written once (`api.deps.ScopedRoutes`):
`/api/v1/cancellation_requests/` and the sales-channel twin
`/api/v1/channel/{channel_id}/cancellation_requests/`, which sees only that channel's requests (the SDK's
`/api/v1/channel/…` spelling; see seed-spec A.1). Tags, bulk tags and exports live in `api.tags` and
`api.exports`; the bodies in `api.schemas`, the list parameters in `api.query_params`.

Who may do what: staff tokens everything; a storefront token creates and reads the requests of its own
channel (on the global routes it sees only them; another channel's twin route is a 403), or of every
channel when it was made without a channel, and may not update or reject; fulfillment-service tokens are refused (403). IBANs are masked (country and last four
characters) except for staff tokens with the `view_iban` permission.

Status changes: there is no approve endpoint in seed 000; staff approve with `PATCH {"status":
"approved"}` (the plan is made and routed) and reject with `POST …/{id}/reject/` or `PATCH {"status":
"rejected"}`. A change the state machine forbids, or an edit of `order_item`, `quantity`, `iban`,
`holder_name`, `fully_refund_as_loyalty_money` or `cancellation_type` once the request is no longer
`waiting`, is a 400 `{"non_field_errors": [...], "code": "invalid_transition"}` and changes nothing.
"""

import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Header, Path, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from cancelflow.api import links, query_params
from cancelflow.api.auth import AkinonCaller, Principal
from cancelflow.api.deps import DbSession, ScopedRoutes
from cancelflow.api.errors import AKINON_RESPONSES, akinon
from cancelflow.api.schemas.cancellation_requests import (
    CancellationRequestCreate,
    CancellationRequestOut,
    CancellationRequestPage,
    CancellationRequestUpdate,
    DetailedCancellationRequestOut,
    DetailedCancellationRequestPage,
    PlanOut,
)
from cancelflow.api.schemas.common import MAX_ID
from cancelflow.api.schemas.errors import AkinonDetail
from cancelflow.config.logging import mask_text
from cancelflow.db import statements_alone, unit_on
from cancelflow.errors import Forbidden, Invalid, NotFound
from cancelflow.models import CancellationRequest
from cancelflow.models.enums import TokenKind
from cancelflow.services import cancellation_requests as requests_service
from cancelflow.services import iban as iban_checks
from cancelflow.services import idempotency, queries, request_view
from cancelflow.services.queries import RequestFilters

VIEW_IBAN: Final = "view_iban"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,200}$")
CLIENT_REQUEST_ID_MAX: Final = 200  # cancellation_requests.client_request_id

RequestId = Annotated[int, Path(gt=0, le=MAX_ID, description="Unique identifier of the resource.")]
ChannelId = Annotated[int, Path(gt=0, le=MAX_ID, description="The sales channel's id.")]


# --- who is asking ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """The caller and the channel its view is limited to (None: every channel)."""

    principal: Principal
    channel_id: int | None

    @property
    def can_view_iban(self) -> bool:
        return self.principal.is_staff and VIEW_IBAN in self.principal.permissions

    @property
    def actor(self) -> str:
        who = (
            f"user:{self.principal.user_id}" if self.principal.user_id else f"token:{self.principal.token_id}"
        )
        return f"staff ({who})"

    def require_staff(self) -> None:
        if not self.principal.is_staff:
            raise Forbidden("You do not have permission to perform this action.")


def require_filter_permissions(filters: RequestFilters, scope: Scope) -> None:
    """Refuse a filter on a value the caller may not read: with it, a match count would confirm a guess.

    `iban` (stored unmasked) is for staff with `view_iban` only; others get a 403 naming the parameter,
    decided before any row is read, so the answer is the same whether the IBAN exists or not.
    """
    if filters.iban is not None and not scope.can_view_iban:
        raise Forbidden(f"Filtering by `iban` needs a staff token with the `{VIEW_IBAN}` permission.")


def internal_text(value: str | None, scope: Scope) -> str | None:
    """Error texts from inside the workflow (remote error bodies, exception messages): staff only, with
    IBANs and e-mail addresses masked unless the token has `view_iban`; other readers see the status."""
    if value is None or not scope.principal.is_staff:
        return None
    return value if scope.can_view_iban else mask_text(value)


def _reader_scope(principal: Principal, channel_id: int | None) -> Scope:
    if principal.is_staff:
        return Scope(principal, channel_id)
    if principal.kind == TokenKind.storefront:
        if principal.channel_id is None:
            # A storefront token made without --channel acts for every channel (one shop, one storefront).
            return Scope(principal, channel_id)
        if channel_id is not None and channel_id != principal.channel_id:
            raise Forbidden("You do not have permission to perform this action.")
        return Scope(principal, principal.channel_id)
    raise Forbidden("You do not have permission to perform this action.")


# `async`: no I/O, so FastAPI calls them on the event loop instead of handing each to a worker thread.
async def global_scope(principal: AkinonCaller) -> Scope:
    return _reader_scope(principal, None)


async def channel_scope(channel_id: ChannelId, principal: AkinonCaller) -> Scope:
    return _reader_scope(principal, channel_id)


# --- presenting ---------------------------------------------------------------------------------------


def _iban(value: str | None, scope: Scope) -> str | None:
    return value if scope.can_view_iban else iban_checks.mask(value)


def _reader_text(value: str | None, scope: Scope) -> str | None:
    """Text every reader sees that others wrote (a fulfillment service's rejection message): IBANs and
    e-mail addresses masked unless the token has `view_iban`."""
    return value if value is None or scope.can_view_iban else mask_text(value)


def present(request: CancellationRequest, scope: Scope) -> CancellationRequestOut:
    return CancellationRequestOut.model_validate(request).model_copy(
        update={
            "iban": _iban(request.iban, scope),
            "rejection_message": _reader_text(request.rejection_message, scope),
        }
    )


def present_detailed(
    session: Session, requests: Sequence[CancellationRequest], scope: Scope
) -> list[DetailedCancellationRequestOut]:
    """Detailed payloads of `services.request_view`, with a fixed number of queries whatever the page size."""
    return [_detailed(detail, scope) for detail in request_view.details(session, requests)]


def _detailed(detail: request_view.RequestDetail, scope: Scope) -> DetailedCancellationRequestOut:
    plan = None
    if detail.plan is not None:
        plan = PlanOut.model_validate(detail)
        steps = [s.model_copy(update={"last_error": internal_text(s.last_error, scope)}) for s in plan.steps]
        plan = plan.model_copy(
            update={"failure_reason": internal_text(plan.failure_reason, scope), "steps": steps}
        )
    parts = SimpleNamespace(
        request=detail.request,
        order=detail.order,
        item=detail.item,
        customer=detail.customer,
        reason=detail.reason,
        plan=plan,
    )
    r = detail.request
    return DetailedCancellationRequestOut.model_validate(parts).model_copy(
        update={"iban": _iban(r.iban, scope), "rejection_message": _reader_text(r.rejection_message, scope)}
    )


# --- pages --------------------------------------------------------------------------------------------


def _page_links(request: Request, page: queries.Page) -> tuple[str | None, str | None]:
    """`next` / `previous` carry the keyset of this page (`page_after` / `page_before`) beside `page`, so a
    client following them is served by an index seek; `page=N` alone still works and skips rows. Only the
    path and query come from the request (`api.links`)."""
    url = request.url.remove_query_params(["page_after", "page_before"])
    next_url = None
    if page.has_next:
        next_params: dict[str, Any] = {"page": page.page + 1}
        if page.results:
            next_params["page_after"] = page.results[-1].id
        next_url = links.same_resource(request, url.include_query_params(**next_params))
    previous_url: str | None = None
    if page.page == 2:
        previous_url = links.same_resource(request, url.remove_query_params("page"))
    elif page.has_previous and page.results:
        previous_url = links.same_resource(
            request, url.include_query_params(page=page.page - 1, page_before=page.results[0].id)
        )
    elif page.has_previous:
        previous_url = links.same_resource(request, url.include_query_params(page=page.page - 1))
    return next_url, previous_url


def _list_page(request: Request, scope: Scope) -> tuple[RequestFilters, int, int, int | None, int | None]:
    page, limit = query_params.parse_page(request.query_params)
    after, before = query_params.parse_cursor(request.query_params)
    filters = RequestFilters.parse(request.query_params.multi_items())
    require_filter_permissions(filters, scope)
    return filters, page, limit, after, before


def check_page(page: queries.Page) -> None:
    """A page past the end (other than the first) is a 404."""
    if page.page > 1 and not page.results:
        raise NotFound("Invalid page.")


def present_page(request: Request, page: queries.Page, scope: Scope) -> CancellationRequestPage:
    """The list envelope `{count, next, previous, results}` of a page (tag lists render theirs so too)."""
    next_url, previous_url = _page_links(request, page)
    return CancellationRequestPage(
        count=page.count,
        next=next_url,
        previous=previous_url,
        results=[present(r, scope) for r in page.results],
    )


NOT_FOUND_PAGE: dict[int | str, dict[str, Any]] = {
    404: {"model": AkinonDetail, "description": "Unknown request, or a page past the end."}
}


# --- routes -------------------------------------------------------------------------------------------


def _idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    key = value.strip()
    if not _KEY_PATTERN.match(key):
        raise Invalid(
            "invalid Idempotency-Key",
            field_errors={IDEMPOTENCY_HEADER: ["Must be 1 to 200 visible ASCII characters."]},
        )
    return key


def _client_request_id(token_id: int, key: str | None) -> str:
    """The request's `client_request_id` (at most 200 characters) for a POST with this key: the key itself
    when it fits beside the token id (webhooks show it to the storefront), else its SHA-256. `#` marks the
    hashed form apart from every `http:` one, so no key, however chosen, names another key's request."""
    if key is None:
        return f"http:{uuid.uuid4().hex}"
    plain = f"http:{token_id}:{key}"
    if len(plain) <= CLIENT_REQUEST_ID_MAX:
        return plain
    return f"http#{token_id}:{hashlib.sha256(key.encode()).hexdigest()}"


ScopeDep = Annotated[Scope, Depends(global_scope)]

router = APIRouter(
    prefix="/api/v1/cancellation_requests",
    tags=["cancellation requests"],
    responses=AKINON_RESPONSES,
)
channel_router = APIRouter(
    prefix="/api/v1/channel/{channel_id}/cancellation_requests",
    tags=["sales channel cancellation requests"],
    responses=AKINON_RESPONSES,
)
# Each route below is served by both routers: on `channel_router` its `ScopeDep` is `channel_scope`.
routes = ScopedRoutes(router, channel_router, global_scope=global_scope, channel_scope=channel_scope)


@routes.get(
    "/",
    response_model=CancellationRequestPage,
    summary="List cancellation requests",
    description="Retrieve a paginated list of all cancellation requests with filtering support."
    + query_params.FILTERS_NOTE,
    responses=NOT_FOUND_PAGE,
    openapi_extra={"parameters": query_params.PAGE_PARAMETERS + query_params.filter_parameters()},
)
def list_requests(request: Request, scope: ScopeDep, session: DbSession) -> CancellationRequestPage:
    # Reads only, each with a snapshot of its own (READ COMMITTED) in a transaction or not: sent alone,
    # without BEGIN and COMMIT round trips.
    with statements_alone(session):
        return present_page(request, _page(request, scope, session), scope)


@routes.get(
    "/detailed/",
    # With `export_format=json` the body is the export: an array of flat rows.
    response_model=DetailedCancellationRequestPage | list[dict[str, Any]],
    summary="List cancellation requests, detailed",
    description=(
        "Retrieve a paginated list of cancellation requests with detailed information (order, order "
        "item, customer, reason, plan with its steps and money transactions). Use `export_format` to "
        "get a file of every matching request instead." + query_params.FILTERS_NOTE
    ),
    responses={
        **NOT_FOUND_PAGE,
        200: {
            "description": "A page of detailed requests, or with `export_format` the exported file.",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {
                    "schema": {"type": "string", "format": "binary"}
                },
            },
        },
        202: {"description": "With `export_format`: too many rows, an export job was queued."},
        429: {
            "description": "With `export_format`: the token has as many export jobs queued or running "
            "as it may (`CANCELFLOW_EXPORT_JOBS_PER_TOKEN`); see `Retry-After`."
        },
    },
    openapi_extra={
        "parameters": [
            *query_params.PAGE_PARAMETERS,
            query_params.EXPORT_PARAMETER,
            *query_params.filter_parameters(),
        ]
    },
)
def list_detailed(
    request: Request, scope: ScopeDep, session: DbSession
) -> Response | DetailedCancellationRequestPage:
    export_format = request.query_params.get("export_format")
    if export_format is not None:
        return _export(request, scope, session, export_format)
    page = _page(request, scope, session)
    next_url, previous_url = _page_links(request, page)
    return DetailedCancellationRequestPage(
        count=page.count,
        next=next_url,
        previous=previous_url,
        results=present_detailed(session, page.results, scope),
    )


def _page(request: Request, scope: Scope, session: Session) -> queries.Page:
    """The page the list routes show."""
    filters, page_number, limit, after, before = _list_page(request, scope)
    page = queries.list_requests(
        session, filters, page_number, limit, channel_id=scope.channel_id, after=after, before=before
    )
    check_page(page)
    return page


def _export(request: Request, scope: Scope, session: Session, export_format: str) -> Response:
    filters, *_ = _list_page(request, scope)
    try:
        from cancelflow.api.exports import export_response
    except ImportError:  # exports are an optional module of this API
        raise Invalid(
            "exports unavailable",
            field_errors={"export_format": ["Exports are not available on this server."]},
        ) from None
    return export_response(
        session,
        request,
        filters,
        export_format,
        channel_id=scope.channel_id,
        token_id=scope.principal.token_id,
    )


@routes.post(
    "/",
    response_model=CancellationRequestOut,
    status_code=201,
    summary="Create a cancellation request",
    description=(
        "Create a new cancellation request for an order item (staff, or a storefront token for its own "
        "channel). It starts `waiting`; the workflow validates it and, by the approval rule, approves it "
        "or waits for staff. A quantity above what is left to cancel, an invalid IBAN, or a refund that "
        "needs a bank account without one is a 400 and stores nothing.\n\n"
        f"`{IDEMPOTENCY_HEADER}` (optional, 1-200 visible ASCII characters, per token): the same key "
        "and body answer the stored response again (one request is created); the same key with another "
        "body is a 422; while the first request with that key is still running, a 409."
    ),
    responses={
        409: {"model": AkinonDetail, "description": "A request with this Idempotency-Key is in flight."},
        422: {"model": AkinonDetail, "description": "The Idempotency-Key was used with another body."},
    },
)
def create_request(
    body: CancellationRequestCreate,
    scope: ScopeDep,
    session: DbSession,
    idempotency_key: Annotated[
        str | None,
        Header(alias=IDEMPOTENCY_HEADER, description="Makes a retried POST safe.", max_length=1000),
    ] = None,
) -> Response:
    key = _idempotency_key(idempotency_key)
    data = body.model_dump(mode="json")
    token_id = scope.principal.token_id
    try:
        with idempotency.keyed(
            # The key's own transactions (its claim, its release) run on the request's connection.
            lambda: unit_on(session),
            token_id=token_id,
            key=key,
            scope=f"POST cancellation_requests channel={scope.channel_id or '*'}",
            body=data,
            default_status=201,
            name=IDEMPOTENCY_HEADER,
        ) as call:
            if call.replay is not None:
                return JSONResponse(call.replay.body, status_code=call.replay.status)
            created, _ = requests_service.create(
                session,
                data,
                client_request_id=_client_request_id(token_id, key),
                channel_id=scope.channel_id,
            )
            payload = present(created, scope).model_dump(mode="json")
            call.complete(session, status=201, body=payload)
            # Inside the key's block: a commit that fails releases the key, as any failure of the call does.
            session.commit()
    except idempotency.KeyReused as exc:
        return akinon(422, {"detail": exc.message, "code": exc.code})
    return JSONResponse(payload, status_code=201)


@routes.get(
    "/{id}/",
    response_model=CancellationRequestOut,
    summary="Retrieve a cancellation request",
    description="Retrieve a specific cancellation request by ID.",
)
def retrieve(id: RequestId, scope: ScopeDep, session: DbSession) -> CancellationRequestOut:
    with statements_alone(session):  # one read: no BEGIN and COMMIT round trips
        return present(requests_service.get_visible(session, id, channel_id=scope.channel_id), scope)


@routes.get(
    "/{id}/detailed/",
    response_model=DetailedCancellationRequestOut,
    summary="Retrieve a cancellation request, detailed",
    description="Retrieve a specific cancellation request by ID with detailed information.",
)
def retrieve_detailed(id: RequestId, scope: ScopeDep, session: DbSession) -> DetailedCancellationRequestOut:
    found = requests_service.get_visible(session, id, channel_id=scope.channel_id)
    return present_detailed(session, [found], scope)[0]


UPDATE_DESCRIPTION: Final = (
    "Update a cancellation request (staff). Only the fields sent change, for PUT as for PATCH (the "
    "seed documents every field as optional). `status: approved` approves a waiting request (its "
    "plan is made and routed); `status: rejected` rejects it as `POST …/{id}/reject/` does. Forbidden "
    "status changes, and edits of `order_item`, `quantity`, `iban`, `holder_name`, "
    "`fully_refund_as_loyalty_money` or `cancellation_type` once the request is not `waiting`, are a "
    "400 with code `invalid_transition`."
)


def _update(
    id: int, body: CancellationRequestUpdate, scope: Scope, session: Session
) -> CancellationRequestOut:
    scope.require_staff()
    updated = requests_service.update_request(
        session, id, body.changes(), actor=scope.actor, channel_id=scope.channel_id
    )
    return present(updated, scope)


@routes.put(
    "/{id}/",
    response_model=CancellationRequestOut,
    summary="Update a cancellation request",
    description=UPDATE_DESCRIPTION,
)
def put_request(
    id: RequestId, body: CancellationRequestUpdate, scope: ScopeDep, session: DbSession
) -> CancellationRequestOut:
    return _update(id, body, scope, session)


@routes.patch(
    "/{id}/",
    response_model=CancellationRequestOut,
    summary="Partially update a cancellation request",
    description=UPDATE_DESCRIPTION,
)
def patch_request(
    id: RequestId, body: CancellationRequestUpdate, scope: ScopeDep, session: DbSession
) -> CancellationRequestOut:
    return _update(id, body, scope, session)


@routes.post(
    "/{id}/reject/",
    response_model=CancellationRequestOut,
    summary="Reject a cancellation request",
    description=(
        "Reject a specific cancellation request (staff; no body). Its plan stops: pending steps are "
        "cancelled and the plan ends `rejected`. If a fulfillment service was asked to cancel "
        "(`cancellation_requested`), the request is withdrawn on our side: Shopify's API has no "
        "withdraw call, so the fulfillment order goes back to `cancellation_rejected` / `in_progress` "
        "(the service keeps the work), its merchant request is closed as `withdrawn`, a "
        "`fulfillment_order.cancellation_withdrawn` event is recorded, and a later answer from the "
        "service is refused (422) and recorded. A request that is completed or already rejected, or "
        "whose plan is already refunding, is a 400 with code `invalid_transition`."
    ),
)
def reject_request(id: RequestId, scope: ScopeDep, session: DbSession) -> CancellationRequestOut:
    scope.require_staff()
    rejected = requests_service.reject(session, id, actor=scope.actor, channel_id=scope.channel_id)
    session.refresh(rejected)
    return present(rejected, scope)
