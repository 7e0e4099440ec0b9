"""Keyset paging for the work queues: a page is read by seeking the sort key, however deep it is.

A queue orders its rows by a key of one or more columns (the last one unique: the row's id), ascending or
descending. A cursor is the key of the last row of a page (`after`: the next page) or of the first one
(`before`: the previous page); reading before a cursor runs the order backwards and turns the rows round.
`Cursor` writes a key as text for a link and reads it back: integers as they are, times as whole
microseconds since the epoch (exact, unlike a float), parts joined by `_`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Generic, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from cancelflow.errors import Invalid

T = TypeVar("T")
Key = tuple[datetime | int, ...]
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND: Final = timedelta(microseconds=1)
MAX_PART: Final = 2**63


@dataclass(frozen=True, slots=True)
class KeysetPage(Generic[T]):
    """One page of a queue in its order; `next_key` / `previous_key`: the cursors of the neighbouring pages
    (None when there is none that way)."""

    rows: Sequence[T]
    next_key: Key | None
    previous_key: Key | None


def page(
    session: Session,
    query: Select[T],
    columns: Sequence[InstrumentedAttribute[Any]],
    key_of: Callable[[T], Key],
    *,
    descending: bool,
    limit: int,
    after: Key | None = None,
    before: Key | None = None,
) -> KeysetPage[T]:
    """Read `limit` rows of `query` in the order of `columns` (all descending or all ascending) after or
    before a cursor; one more row is read to tell whether another page follows."""
    if after is not None and before is not None:
        raise ValueError("after or before, not both")
    key = tuple_(*columns)
    backwards = before is not None
    forward_desc = descending != backwards
    if after is not None:
        query = query.where(key < tuple_(*after) if descending else key > tuple_(*after))
    if before is not None:
        query = query.where(key > tuple_(*before) if descending else key < tuple_(*before))
    order = [c.desc() if forward_desc else c.asc() for c in columns]
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
    if not rows:
        return KeysetPage(rows, None, None)
    if backwards:
        return KeysetPage(rows, key_of(rows[-1]), key_of(rows[0]) if more else None)
    return KeysetPage(
        rows, key_of(rows[-1]) if more else None, key_of(rows[0]) if after is not None else None
    )


class Cursor:
    """A key as text for a link, and back; `kinds` says what each part of the key is."""

    def __init__(self, *kinds: type[datetime] | type[int]) -> None:
        self.kinds = kinds

    def write(self, key: Key) -> str:
        parts = []
        for kind, value in zip(self.kinds, key, strict=True):
            if kind is datetime:
                assert isinstance(value, datetime)
                parts.append(str((value - EPOCH) // MICROSECOND))
            else:
                parts.append(str(value))
        return "_".join(parts)

    def read(self, text: str | None, *, field: str) -> Key | None:
        """The key a link carried (None when empty); `Invalid` naming `field` for anything else."""
        if text is None or text == "":
            return None
        parts = text.split("_")
        problem = Invalid(field, field_errors={field: ["Not a page of this list: follow the page links."]})
        if len(parts) != len(self.kinds) or not all(
            p.isascii() and p.isdigit() and len(p) <= 18 for p in parts
        ):
            raise problem
        numbers = [int(p) for p in parts]
        if any(n >= MAX_PART for n in numbers):
            raise problem
        try:
            return tuple(
                EPOCH + n * MICROSECOND if kind is datetime else n
                for kind, n in zip(self.kinds, numbers, strict=True)
            )
        except OverflowError:
            raise problem from None
