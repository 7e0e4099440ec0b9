"""The GraphQL cost bucket, as Shopify runs it: each token has `graphql_bucket_size` points (1,000)
restoring at `graphql_restore_rate` points per second (50). A query is admitted when its requested cost
fits in what is available (`admit`, which takes it), and once it has run the points it did not use are
given back (`settle`: requested - actual). The bucket is a `services.buckets` leaky bucket, shared by
every API replica through Redis.

`cost_extension`, `throttled_error` and `max_cost_error` build the parts of the answer Shopify clients
read: `extensions.cost` on every answer, the `THROTTLED` error (no `data`, `actualQueryCost: null`) and the
`MAX_COST_EXCEEDED` error of a query refused before it runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from graphql import GraphQLError

from cancelflow.config import get_settings
from cancelflow.services.buckets import EPSILON, Bucket, Level, get_buckets

LIMITS_DOCUMENTATION: Final = "https://shopify.dev/api/usage/limits#rate-limits"
RATE_LIMITS_DOCUMENTATION: Final = "https://shopify.dev/api/usage/rate-limits"


@dataclass(frozen=True)
class ThrottleStatus:
    """`extensions.cost.throttleStatus`: the token's bucket after this query."""

    maximum_available: float
    currently_available: int
    restore_rate: float

    def as_json(self) -> dict[str, Any]:
        return {
            "maximumAvailable": self.maximum_available,
            "currentlyAvailable": self.currently_available,
            "restoreRate": self.restore_rate,
        }

    def seconds_until(self, points: int) -> float:
        """How long a client waits before `points` are available (what a polite client sleeps)."""
        return max(0.0, (points - self.currently_available) / self.restore_rate)


def bucket() -> Bucket:
    settings = get_settings()
    return Bucket("graphql", float(settings.graphql_bucket_size), settings.graphql_restore_rate)


def _status(spec: Bucket, level: Level) -> ThrottleStatus:
    return ThrottleStatus(
        maximum_available=float(spec.capacity),
        # Shopify reports whole points; never more than is really there.
        currently_available=max(0, math.floor(spec.capacity - level.level + EPSILON)),
        restore_rate=float(spec.rate),
    )


def admit(token_key: str, requested: int, *, now: float | None = None) -> tuple[bool, ThrottleStatus]:
    """Take `requested` points from the token's bucket if they are available: (admitted, status after)."""
    spec = bucket()
    level = get_buckets().take(spec, token_key, max(0, requested), now=now)
    return level.admitted, _status(spec, level)


def settle(token_key: str, requested: int, actual: int, *, now: float | None = None) -> ThrottleStatus:
    """Give back what an admitted query did not use (`requested - actual`, never negative)."""
    spec = bucket()
    level = get_buckets().refund(spec, token_key, max(0, requested - actual), now=now)
    return _status(spec, level)


def cost_extension(requested: int, actual: int | None, status: ThrottleStatus) -> dict[str, Any]:
    """`extensions.cost` (Shopify prints the bucket's size and rate as floats, the points as integers)."""
    return {
        "requestedQueryCost": requested,
        "actualQueryCost": actual,
        "throttleStatus": status.as_json(),
    }


def throttled_error() -> GraphQLError:
    return GraphQLError(
        "Throttled", extensions={"code": "THROTTLED", "documentation": RATE_LIMITS_DOCUMENTATION}
    )


def max_cost_error(cost: int, max_cost: int | None = None) -> GraphQLError:
    limit = get_settings().graphql_max_cost if max_cost is None else max_cost
    return GraphQLError(
        f"Query cost is {cost}, which exceeds the single query max cost limit ({limit}). See "
        f"{LIMITS_DOCUMENTATION} for more information on how the cost of a query is calculated. To query "
        "larger amounts of data with fewer limits, bulk operations should be used instead.",
        extensions={
            "code": "MAX_COST_EXCEEDED",
            "cost": cost,
            "maxCost": limit,
            "documentation": LIMITS_DOCUMENTATION,
        },
    )


__all__ = [
    "ThrottleStatus",
    "admit",
    "bucket",
    "cost_extension",
    "max_cost_error",
    "settle",
    "throttled_error",
]
