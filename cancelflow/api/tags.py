"""Tags on cancellation requests (seed 000 operations 4-12), global and per sales channel.

Route names are not documented by Akinon; cancelflow uses DRF `@action` style names under the request
resource (`…/{id}/tags/`, `…/{id}/add_tag/`, `…/filter_by_tags/`, `…/bulk_add_tags/`, …), each under
`/api/v1/cancellation_requests/` and its channel twin `/api/v1/channel/{channel_id}/cancellation_requests/`
(where a request of another channel is not found, and bulk operations skip it).

Tag keys are strings of 1..100 characters, stored as given (case-sensitive); adding a key twice or
removing one the request lacks is not an error.

This router must be included before the cancellation-request router: `filter_by_tags/` and
`exclude_by_tags/` would otherwise be taken for a request `{id}`.
"""

import json
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from cancelflow.api.auth import AkinonStaff
from cancelflow.api.bulk_jobs import absolute, send
from cancelflow.api.cancellation_requests import (
    Scope,
    check_page,
    present_page,
    require_filter_permissions,
)
from cancelflow.api.deps import DbSession, ScopedRoutes
from cancelflow.api.errors import AKINON_RESPONSES, parse_error_reason
from cancelflow.api.query_params import filter_parameters, parse_cursor, parse_page
from cancelflow.api.schemas.bulk_jobs import JobAccepted
from cancelflow.api.schemas.tags import BulkTagsBody, TagBody, TagsBody
from cancelflow.errors import Invalid
from cancelflow.models.tags import TAG_KEY_MAX_LENGTH
from cancelflow.services import bulk, tags
from cancelflow.services.queries import RequestFilters

RequestId = Annotated[
    int, Path(alias="id", gt=0, le=2**63 - 1, description="Unique identifier of the resource")
]
NO_CONTENT: dict[int | str, dict[str, Any]] = {204: {"description": "No content."}}


async def tag_keys_param(request: Request) -> list[str]:
    """`key` from the query string (repeatable) or, failing that, from a JSON body `{"key": …}`."""
    keys = [k for k in request.query_params.getlist("key") if k != ""]
    if not keys:
        raw = await request.body()
        if raw:
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError) as exc:  # answered as any route's unreadable body
                error = {"type": "json_invalid", "loc": ("body", 0), "msg": "JSON decode error"}
                raise RequestValidationError([{**error, "ctx": {"error": parse_error_reason(exc)}}]) from exc
            value = body.get("key") if isinstance(body, dict) else None
            if isinstance(value, str) and value:
                keys = [value]
            elif isinstance(value, list):
                keys = [v for v in value if isinstance(v, str) and v]
    if not keys:
        raise Invalid("key is required", field_errors={"key": ["This field is required."]}, code="required")
    return tags.check_key_limits(keys, field="key")


def _staff(principal: AkinonStaff) -> Scope:
    return Scope(principal, None)


def _channel_staff(
    channel_id: Annotated[int, Path(gt=0, le=2**63 - 1, description="Sales channel id.")],
    principal: AkinonStaff,
) -> Scope:
    return Scope(principal, channel_id)


def _list_parameters() -> list[dict[str, Any]]:
    key = {
        "name": "key",
        "in": "query",
        "required": True,
        "description": "Tag to filter cancellation requests by (required here or in the body).",
        "schema": {"type": "string", "minLength": 1, "maxLength": TAG_KEY_MAX_LENGTH},
        "example": "tag1",
    }
    return [key, *filter_parameters()]


StaffScope = Annotated[Scope, Depends(_staff)]

router = APIRouter(
    prefix="/api/v1/cancellation_requests", tags=["cancellation request tags"], responses=AKINON_RESPONSES
)
channel_router = APIRouter(
    prefix="/api/v1/channel/{channel_id}/cancellation_requests",
    tags=["channel cancellation request tags"],
    responses=AKINON_RESPONSES,
)
# Each route below is served by both routers: on `channel_router` its `StaffScope` is `_channel_staff`.
routes = ScopedRoutes(router, channel_router, global_scope=_staff, channel_scope=_channel_staff)


@routes.get(
    "/{id}/tags/",
    response_model=list[str],
    summary="Tags of a cancellation request",
    description="The request's tag keys, in key order. Staff token.",
    responses={200: {"content": {"application/json": {"example": ["tag1"]}}}},
)
def get_tags(request_id: RequestId, scope: StaffScope, session: DbSession) -> list[str]:
    tags.get_request(session, request_id, channel_id=scope.channel_id)
    return tags.keys_of(session, request_id)


def _change(
    session: Session, request_id: int, keys: list[str], channel_id: int | None, *, add: bool
) -> Response:
    if add:
        tags.add(session, request_id, keys, channel_id=channel_id)
    else:
        tags.remove(session, request_id, keys, channel_id=channel_id)
    return Response(status_code=204)


@routes.post(
    "/{id}/add_tag/",
    status_code=204,
    response_class=Response,
    summary="Add a tag to a cancellation request",
    description='Body `{"key": "tag1"}`. Adding a key the request has is a no-op. **204** no content.',
    responses=NO_CONTENT,
)
def add_tag(request_id: RequestId, body: TagBody, scope: StaffScope, session: DbSession) -> Response:
    return _change(session, request_id, [body.key], scope.channel_id, add=True)


@routes.post(
    "/{id}/add_tags/",
    status_code=204,
    response_class=Response,
    summary="Add multiple tags to a cancellation request",
    description='Body `{"keys": ["tag1", "tag2"]}`. **204** no content.',
    responses=NO_CONTENT,
)
def add_tags(
    request_id: RequestId,
    body: TagsBody,
    scope: StaffScope,
    session: DbSession,
) -> Response:
    return _change(session, request_id, body.keys, scope.channel_id, add=True)


@routes.post(
    "/{id}/remove_tag/",
    status_code=204,
    response_class=Response,
    summary="Remove a tag from a cancellation request",
    description='Body `{"key": "tag1"}`. Removing a key the request lacks is a no-op. **204** no content.',
    responses=NO_CONTENT,
)
def remove_tag(request_id: RequestId, body: TagBody, scope: StaffScope, session: DbSession) -> Response:
    return _change(session, request_id, [body.key], scope.channel_id, add=False)


@routes.post(
    "/{id}/remove_tags/",
    status_code=204,
    response_class=Response,
    summary="Remove multiple tags from a cancellation request",
    description='Body `{"keys": ["tag1", "tag2"]}`. **204** no content.',
    responses=NO_CONTENT,
)
def remove_tags(
    request_id: RequestId,
    body: TagsBody,
    scope: StaffScope,
    session: DbSession,
) -> Response:
    return _change(session, request_id, body.keys, scope.channel_id, add=False)


LIST_DOC: Final = (
    "List cancellation requests {what} the tag `key` (required, in the query string, repeatable "
    'for any of several keys, or in a JSON body `{{"key": …}}`), with every filter of the '
    "list and the same pagination (`page`, `limit`) and envelope. A missing `key` is a 400 "
    '`{{"key": ["This field is required."], "code": "required"}}`. Staff token.'
)
TagKeys = Annotated[list[str], Depends(tag_keys_param)]


def _tagged(
    session: Session,
    request: Request,
    scope: Scope,
    keys: list[str],
    *,
    exclude: bool,
) -> dict[str, Any]:
    params = request.query_params
    filters = RequestFilters.parse(params.multi_items())
    require_filter_permissions(filters, scope)
    page, limit = parse_page(params)
    after, before = parse_cursor(params)
    result = tags.list_tagged(
        session,
        filters,
        keys,
        exclude=exclude,
        page=page,
        limit=limit,
        channel_id=scope.channel_id,
        after=after,
        before=before,
    )
    check_page(result)
    return present_page(request, result, scope).model_dump(mode="json")


@routes.get(
    "/filter_by_tags/",
    summary="List cancellation requests with a tag",
    description=LIST_DOC.format(what="that carry"),
    openapi_extra={"parameters": _list_parameters()},
)
def filter_by_tags(request: Request, scope: StaffScope, keys: TagKeys, session: DbSession) -> dict[str, Any]:
    return _tagged(session, request, scope, keys, exclude=False)


@routes.get(
    "/exclude_by_tags/",
    summary="List cancellation requests without a tag",
    description=LIST_DOC.format(what="that carry none of"),
    openapi_extra={"parameters": _list_parameters()},
)
def exclude_by_tags(request: Request, scope: StaffScope, keys: TagKeys, session: DbSession) -> dict[str, Any]:
    return _tagged(session, request, scope, keys, exclude=True)


def _bulk(
    session: Session,
    request: Request,
    body: BulkTagsBody,
    scope: Scope,
    op: bulk.Op,
) -> Response:
    bulk.check_ids(body.objects)  # as sent, duplicates included
    ids = sorted(set(body.objects))
    if len(ids) <= bulk.SYNC_MAX_IDS:
        bulk.apply_to_ids(session, op, ids, body.keys, channel_id=scope.channel_id)
        return Response(status_code=204)
    job = bulk.create_job(
        session, op, body.keys, ids=ids, channel_id=scope.channel_id, token_id=scope.principal.token_id
    )
    send(session, "tags.bulk", job.id)
    accepted = JobAccepted(id=job.id, url=absolute(request, f"/api/v1/bulk_jobs/{job.id}/"))
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202)


BULK_DOC: Final = (
    'Body `{{"objects": [ids], "keys": [...]}}` (`ids` is accepted for `objects`). Up to '
    f"{bulk.SYNC_MAX_IDS} ids are {{verb}} in one statement: **204** no content. More ids become a "
    'background job: **202** `{{"id", "url"}}`; poll `url` (`GET /api/v1/bulk_jobs/{{id}}/`) '
    "until `status` is `done`. Unknown ids are skipped. Staff token. Limits: at most "
    "`CANCELFLOW_BULK_MAX_IDS` ids and `CANCELFLOW_TAG_KEYS_PER_CALL` keys (400 `max_length`), no request "
    "above `CANCELFLOW_TAGS_PER_REQUEST` tags (400 `too_many_tags`), at most "
    "`CANCELFLOW_BULK_JOBS_PER_TOKEN` jobs of the token queued or running (429 `too_many_jobs`, "
    "`Retry-After`); a refused call writes nothing."
)
BULK_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    202: {"model": JobAccepted, "description": "More ids than the synchronous limit: a job was queued."},
    429: {"description": "The token has as many bulk jobs queued or running as it may; see `Retry-After`."},
    **NO_CONTENT,
}


@routes.post(
    "/bulk_add_tags/",
    status_code=204,
    response_class=Response,
    summary="Bulk add tags to cancellation requests",
    description=BULK_DOC.format(verb="tagged"),
    responses=BULK_RESPONSES,
)
def bulk_add_tags(request: Request, body: BulkTagsBody, scope: StaffScope, session: DbSession) -> Response:
    return _bulk(session, request, body, scope, "add")


@routes.post(
    "/bulk_remove_tags/",
    status_code=204,
    response_class=Response,
    summary="Bulk remove tags from cancellation requests",
    description=BULK_DOC.format(verb="untagged"),
    responses=BULK_RESPONSES,
)
def bulk_remove_tags(request: Request, body: BulkTagsBody, scope: StaffScope, session: DbSession) -> Response:
    return _bulk(session, request, body, scope, "remove")
