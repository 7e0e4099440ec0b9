"""Tags on cancellation requests: read, add and remove keys on one request, or on many with one statement.

Keys are free strings of 1..`tag_key_max_length` characters, stored as given (case-sensitive); adding a key
a request already has, or removing one it lacks, is a no-op. Every write is one set-based statement.

Limits (settings, README "Limits"), checked here for every caller: at most `tag_keys_per_call` distinct keys
per call, and at most `tags_per_request` distinct keys on one request after an add; an add that would exceed
it is refused before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Text,
    any_,
    delete,
    exists,
    false,
    func,
    literal,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.orm import Session

from cancelflow.config import get_settings
from cancelflow.errors import Invalid, NotFound
from cancelflow.models import CancellationRequest, CancellationRequestTag, Tag

if TYPE_CHECKING:
    from cancelflow.services.queries import Page, RequestFilters


def unique_keys(keys: Iterable[str]) -> list[str]:
    """The keys once each, in the order given (duplicates in one call are ignored)."""
    return list(dict.fromkeys(keys))


def check_key_limits(keys: Sequence[str], *, field: str = "keys") -> list[str]:
    """The distinct keys, or Invalid (400) when there are more than `tag_keys_per_call` of them or one is
    longer than `tag_key_max_length`. Every API and CLI path that names keys passes here first."""
    settings = get_settings()
    distinct = unique_keys(keys)
    if len(distinct) > settings.tag_keys_per_call:
        raise Invalid(
            "too many tag keys",
            field_errors={
                field: [f"Ensure this field has no more than {settings.tag_keys_per_call} elements."]
            },
            code="max_length",
        )
    if any(len(key) > settings.tag_key_max_length for key in distinct):
        raise Invalid(
            "tag key too long",
            field_errors={
                field: [f"Ensure this field has no more than {settings.tag_key_max_length} characters."]
            },
            code="max_length",
        )
    return distinct


def check_tag_cap(session: Session, request_ids: Select[int], keys: Sequence[str]) -> None:
    """Invalid (400) if adding `keys` would leave any selected request with more than `tags_per_request`
    distinct keys: its keys other than these, plus these, are counted before anything is written."""
    cap = get_settings().tags_per_request
    keys = unique_keys(keys)
    chosen = request_ids.subquery("capped")
    others = (
        select(func.count())
        .select_from(CancellationRequestTag)
        .where(
            CancellationRequestTag.request_id == chosen.c[0],
            CancellationRequestTag.tag_id.not_in(select(Tag.id).where(Tag.key == any_(keys_array(keys)))),
        )
        .scalar_subquery()
    )
    over = session.scalar(select(chosen.c[0]).where(others + len(keys) > cap).limit(1))
    if over is not None:
        raise Invalid(
            "too many tags on one request",
            field_errors={
                "keys": [
                    f"A cancellation request may carry at most {cap} tags; request {over} would have more."
                ]
            },
            code="too_many_tags",
        )


def get_request(session: Session, request_id: int, *, channel_id: int | None = None) -> CancellationRequest:
    """The request, or NotFound (also when it belongs to another channel than the path's)."""
    request = session.get(CancellationRequest, request_id)
    if request is None or (channel_id is not None and request.channel_id != channel_id):
        raise NotFound(f"cancellation request {request_id} not found")
    return request


def keys_of(session: Session, request_id: int) -> list[str]:
    """The request's tag keys in key order."""
    return list(
        session.scalars(
            select(Tag.key)
            .join(CancellationRequestTag, CancellationRequestTag.tag_id == Tag.id)
            .where(CancellationRequestTag.request_id == request_id)
            .order_by(Tag.key)
        )
    )


def ensure_tags(session: Session, keys: Sequence[str]) -> None:
    """Create the tag rows that do not exist yet (concurrent creators meet on the unique key)."""
    if keys:
        session.execute(
            insert(Tag)
            .from_select(["key"], select(_unnest_text(keys)))
            .on_conflict_do_nothing(index_elements=[Tag.key])
        )


def ids_array(ids: Sequence[int]) -> ColumnElement[list[int]]:
    """One array parameter: `= ANY(:ids)` plans like IN but binds once, whatever the length."""
    return literal(list(ids), ARRAY(BigInteger))


def _unnest_text(keys: Sequence[str]) -> ColumnElement[str]:
    return func.unnest(literal(list(keys), ARRAY(Text)))


def add_to_selection(session: Session, request_ids: Select[int], keys: Sequence[str]) -> int:
    """Tag every request the `request_ids` select yields with every key; returns the links inserted.

    Refused (Invalid, nothing written) when a request would carry more than `tags_per_request` keys."""
    keys = unique_keys(keys)
    if not keys:
        return 0
    check_tag_cap(session, request_ids, keys)
    ensure_tags(session, keys)
    chosen = request_ids.subquery("chosen")
    rows = select(chosen.c[0], Tag.id).select_from(chosen.join(Tag, Tag.key == any_(keys_array(keys))))
    result = session.execute(
        insert(CancellationRequestTag)
        .from_select(["request_id", "tag_id"], rows)
        .on_conflict_do_nothing(index_elements=["request_id", "tag_id"])
    )
    return int(getattr(result, "rowcount", 0) or 0)


def remove_from_selection(session: Session, request_ids: Select[int], keys: Sequence[str]) -> int:
    """Remove the keys from every request the select yields; returns the links deleted."""
    keys = unique_keys(keys)
    if not keys:
        return 0
    result = session.execute(
        delete(CancellationRequestTag).where(
            CancellationRequestTag.request_id.in_(request_ids),
            CancellationRequestTag.tag_id.in_(select(Tag.id).where(Tag.key == any_(keys_array(keys)))),
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def keys_array(keys: Sequence[str]) -> ColumnElement[list[str]]:
    return literal(list(keys), ARRAY(Text))


def requests_by_ids(ids: Sequence[int], *, channel_id: int | None = None) -> Select[int]:
    """The ids among `ids` that name existing requests (of the channel, if given); unknown ids drop out."""
    stmt = select(CancellationRequest.id).where(CancellationRequest.id == any_(ids_array(ids)))
    if channel_id is not None:
        stmt = stmt.where(CancellationRequest.channel_id == channel_id)
    return stmt


def add(session: Session, request_id: int, keys: Sequence[str], *, channel_id: int | None = None) -> None:
    """Add keys to one request (404 if it does not exist)."""
    keys = check_key_limits(keys)
    get_request(session, request_id, channel_id=channel_id)
    add_to_selection(session, select(literal(request_id, BigInteger)), keys)


def remove(session: Session, request_id: int, keys: Sequence[str], *, channel_id: int | None = None) -> None:
    """Remove keys from one request (404 if it does not exist)."""
    keys = check_key_limits(keys)
    get_request(session, request_id, channel_id=channel_id)
    remove_from_selection(session, select(literal(request_id, BigInteger)), keys)


def has_any_tag(keys: Sequence[str]) -> ColumnElement[bool]:
    """A WHERE condition on CancellationRequest: it carries at least one of `keys`."""
    return exists(
        select(true())
        .select_from(CancellationRequestTag)
        .join(Tag, Tag.id == CancellationRequestTag.tag_id)
        .where(CancellationRequestTag.request_id == CancellationRequest.id, Tag.key == any_(keys_array(keys)))
    )


__all__ = [
    "add",
    "add_to_selection",
    "check_key_limits",
    "check_tag_cap",
    "ensure_tags",
    "get_request",
    "has_any_tag",
    "ids_array",
    "keys_array",
    "keys_of",
    "list_tagged",
    "remove",
    "remove_from_selection",
    "requests_by_ids",
    "unique_keys",
]


def _links(session: Session, keys: Sequence[str]) -> tuple[list[int], Select[Any]]:
    """(tag ids of `keys`, a SELECT of the ids of the requests carrying any of them)."""
    tag_ids = list(session.scalars(select(Tag.id).where(Tag.key == any_(keys_array(keys)))))
    links = select(CancellationRequestTag.request_id).where(CancellationRequestTag.tag_id.in_(tag_ids))
    return tag_ids, (links.distinct() if len(tag_ids) > 1 else links)


def tagged_ids(session: Session, filters: RequestFilters, keys: Sequence[str]) -> Select[Any]:
    """A SELECT of `cancellation_requests.id` under `filters` carrying any of `keys` (what `list_tagged`
    pages through), for counting."""
    from cancelflow.services import queries

    tag_ids, links = _links(session, keys)
    return queries.filter_requests(select(CancellationRequest.id), filters).where(
        CancellationRequest.id.in_(links) if tag_ids else false()
    )


def list_tagged(
    session: Session,
    filters: RequestFilters,
    keys: Sequence[str],
    *,
    exclude: bool = False,
    page: int = 1,
    limit: int = 10,
    channel_id: int | None = None,
    after: int | None = None,
    before: int | None = None,
    known_count: tuple[int, bool] | None = None,
) -> Page:
    """One page (newest first) of the requests matching `filters` that carry (or, `exclude`, carry none
    of) `keys`: `services.queries.list_requests` with one more semi-join, and the same count and keyset
    (`after` / `before`) rules.

    The keys are resolved to tag ids first, so the planner sees constants it has statistics for; with no
    other filter the page and the count are read from the (tag_id, request_id) index alone.
    """
    from cancelflow.services import queries

    tag_ids, links = _links(session, keys)
    base: Select[int]
    if exclude:
        base = queries.filter_requests(select(CancellationRequest.id), filters, channel_id=channel_id)
        if tag_ids:
            base = base.where(
                ~exists(
                    select(true()).where(
                        CancellationRequestTag.request_id == CancellationRequest.id,
                        CancellationRequestTag.tag_id.in_(tag_ids),
                    )
                )
            )
        key: Any = CancellationRequest.id
    elif filters.is_empty and channel_id is None:
        base = links if tag_ids else select(CancellationRequestTag.request_id).where(false())
        key = CancellationRequestTag.request_id
    else:
        base = queries.filter_requests(select(CancellationRequest.id), filters, channel_id=channel_id).where(
            CancellationRequest.id.in_(links) if tag_ids else false()
        )
        key = CancellationRequest.id
    return queries.read_page(
        session, base, key, page=page, limit=limit, after=after, before=before, known_count=known_count
    )
