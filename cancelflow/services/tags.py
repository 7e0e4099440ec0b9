"""Tags on cancellation requests: read, add and remove keys on one request, or on many with one statement.

Keys are free strings of 1..100 characters, stored as given (case-sensitive); adding a key a request
already has, or removing one it lacks, is a no-op. Every write is one set-based statement.
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

from cancelflow.errors import NotFound
from cancelflow.models import CancellationRequest, CancellationRequestTag, Tag

if TYPE_CHECKING:
    from cancelflow.services.queries import Page, RequestFilters


def unique_keys(keys: Iterable[str]) -> list[str]:
    """The keys once each, in the order given (duplicates in one call are ignored)."""
    return list(dict.fromkeys(keys))


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
    """Tag every request the `request_ids` select yields with every key; returns the links inserted."""
    keys = unique_keys(keys)
    if not keys:
        return 0
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
    get_request(session, request_id, channel_id=channel_id)
    add_to_selection(session, select(literal(request_id, BigInteger)), keys)


def remove(session: Session, request_id: int, keys: Sequence[str], *, channel_id: int | None = None) -> None:
    """Remove keys from one request (404 if it does not exist)."""
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
) -> Page:
    """One page (newest first) of the requests matching `filters` that carry (or, `exclude`, carry none
    of) `keys`: `services.queries.list_requests` with one more semi-join, and the same count and keyset
    (`after` / `before`) rules.

    The keys are resolved to tag ids first, so the planner sees constants it has statistics for; with no
    other filter the page and the count are read from the (tag_id, request_id) index alone.
    """
    from cancelflow.services import queries

    tag_ids = list(session.scalars(select(Tag.id).where(Tag.key == any_(keys_array(keys)))))
    links = select(CancellationRequestTag.request_id).where(CancellationRequestTag.tag_id.in_(tag_ids))
    if len(tag_ids) > 1:
        links = links.distinct()
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
    return queries.read_page(session, base, key, page=page, limit=limit, after=after, before=before)
