"""A state machine as data: a transition table and the one check every move of its status makes.

For statuses changed by guarded bulk `UPDATE`s (jobs, webhook deliveries), `sources(target)` gives the
`WHERE status IN (…)` of the statement, so a row in any other status is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from cancelflow.errors import InvalidTransition

S = TypeVar("S", bound=StrEnum)


@dataclass(frozen=True, slots=True)
class Machine(Generic[S]):
    name: str
    table: Mapping[S, frozenset[S]]

    def allows(self, current: S, target: S) -> bool:
        return target in self.table[current]

    def require(self, current: S, target: S) -> None:
        """InvalidTransition unless the table allows `current -> target`."""
        require_move(self.name, self.table, current, target)

    def sources(self, target: S) -> tuple[S, ...]:
        """Every status that may move to `target`, in the enum's order."""
        return tuple(status for status, targets in self.table.items() if target in targets)


def require_move(
    name: str,
    table: Mapping[Any, frozenset[Any]],
    current: StrEnum,
    target: StrEnum,
    *,
    message: str | None = None,
    code: str | None = None,
) -> None:
    """The one check of every status change in cancelflow: `InvalidTransition` (with `message`, or one naming
    the move) unless machine `name`'s table allows `current -> target`."""
    if target not in table[current]:
        raise InvalidTransition(
            message or f"{name}: {current.value} -> {target.value} is not allowed",
            code=code,
            machine=name,
            current=current.value,
            target=target.value,
        )


__all__ = ["Machine", "require_move"]
