"""Saved views: a staff user's named filter states of the requests list.

A view keeps the list's query string (its filters and status tab, never its page cursor), checked by the
list's own parsing (`RequestFilters.parse`, `tags.check_key_limits`) when it is saved, so opening a view
shows what the list showed. Views belong to one user: every read and change names the user, and another
user's view is `NotFound`, as a missing one is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from urllib.parse import urlencode

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cancelflow import textcheck
from cancelflow.errors import Invalid, NotFound
from cancelflow.models import SavedView
from cancelflow.services import tags
from cancelflow.services.queries import RequestFilters

MAX_NAME: Final = 100
MAX_QUERY: Final = 4000
MAX_VIEWS: Final = 100  # per user
# The list's parameters a view keeps: its filters (the API's names), the tag and the status tab.
KEPT: Final = frozenset({*RequestFilters.model_fields, "tag"})


def clean_query(params: Iterable[tuple[str, str]]) -> str:
    """The filter state of the list as a view keeps it: the list's filter parameters with a value, in the
    order sent (a repeated one: its last value), checked as the list checks them; `Invalid` otherwise."""
    kept: dict[str, str] = {}
    for name, value in params:
        if name in KEPT:
            kept.pop(name, None)
            if value.strip():
                kept[name] = value.strip() if name == "tag" else value
    RequestFilters.parse(kept.items())
    if "tag" in kept:
        tags.check_key_limits([kept["tag"]], field="tag")
    query = urlencode(kept)
    if len(query) > MAX_QUERY:
        raise Invalid("query", field_errors={"query": ["These filters are too long to save."]})
    return query


def _clean_name(name: str) -> str:
    text = " ".join(name.split())
    if not text:
        raise Invalid("name", field_errors={"name": ["Give the view a name."]})
    if len(text) > MAX_NAME:
        raise Invalid("name", field_errors={"name": [f"A view's name has at most {MAX_NAME} characters."]})
    if (problem := textcheck.problem(text)) is not None:
        raise Invalid("name", field_errors={"name": [problem]})
    return text


def list_views(session: Session, user_id: int) -> list[SavedView]:
    """The user's views by name."""
    return list(
        session.scalars(select(SavedView).where(SavedView.user_id == user_id).order_by(SavedView.name))
    )


def get(session: Session, user_id: int, view_id: int, *, lock: bool = False) -> SavedView:
    query = select(SavedView).where(SavedView.id == view_id, SavedView.user_id == user_id)
    view = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if view is None:
        raise NotFound(f"no saved view {view_id}")
    return view


def _named(session: Session, user_id: int, name: str) -> SavedView | None:
    return session.scalars(
        select(SavedView).where(SavedView.user_id == user_id, SavedView.name == name).with_for_update()
    ).one_or_none()


def save(session: Session, user_id: int, name: str, params: Iterable[tuple[str, str]]) -> SavedView:
    """Save the filter state under `name`; a view of that name already the user's takes the new state."""
    clean = _clean_name(name)
    query = clean_query(params)
    view = _named(session, user_id, clean)
    if view is None:
        count = session.scalar(
            select(func.count()).select_from(SavedView).where(SavedView.user_id == user_id)
        )
        if (count or 0) >= MAX_VIEWS:
            raise Invalid(
                "name", field_errors={"name": [f"You have {MAX_VIEWS} saved views; delete one first."]}
            )
        view = SavedView(user_id=user_id, name=clean, query=query)
        session.add(view)
    else:
        view.query = query
    session.flush()
    return view


def rename(session: Session, user_id: int, view_id: int, name: str) -> SavedView:
    view = get(session, user_id, view_id, lock=True)
    clean = _clean_name(name)
    other = _named(session, user_id, clean)
    if other is not None and other.id != view.id:
        raise Invalid("name", field_errors={"name": [f"You already have a view named {clean}."]})
    view.name = clean
    session.flush()
    return view


def delete(session: Session, user_id: int, view_id: int) -> None:
    session.delete(get(session, user_id, view_id, lock=True))
    session.flush()
