"""What Shopify-style rate limiting costs per request: the bucket round trips and the query-cost walk.

* GraphQL bucket: `admit` + `settle` (two Lua calls on the shared Redis) per query;
* REST bucket: one `take` per call, and the same through `anyio.to_thread.run_sync` as the middleware
  runs it (the thread hop included);
* cost: `check_query_limits` + `requested_cost` before a query runs and `actual_cost` after, for a
  typical fulfillment-service query and for the full introspection query, beside graphql-core's own
  `validate` of the same document (the ratio is the figure to read: the machine is shared and noisy).

    .venv/bin/python bench/graphql_limits.py [--rounds 2000]

Needs only Redis (`CANCELFLOW_BENCH_REDIS`, db 15, as the other benchmarks). Figures are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REDIS = os.environ.get("CANCELFLOW_BENCH_REDIS", "redis://127.0.0.1:6379")
VERSION = "2026-01"

QUERY = """query Pending($first: Int!) {
  assignedFulfillmentOrders(first: $first, assignmentStatus: CANCELLATION_REQUESTED) {
    edges { cursor node {
      id status requestStatus
      merchantRequests(first: 5) { edges { node { message sentAt requestOptions } } }
      lineItems(first: 10) { nodes { id sku totalQuantity } }
    } }
    pageInfo { hasNextPage endCursor }
  }
}"""


def _data(orders: int) -> dict[str, Any]:
    node = {
        "id": "gid://shopify/FulfillmentOrder/1",
        "status": "IN_PROGRESS",
        "requestStatus": "CANCELLATION_REQUESTED",
        "merchantRequests": {"edges": [{"node": {"message": "m", "sentAt": "t", "requestOptions": None}}]},
        "lineItems": {"nodes": [{"id": "x", "sku": "s", "totalQuantity": 1}] * 3},
    }
    return {
        "assignedFulfillmentOrders": {
            "edges": [{"cursor": "c", "node": node}] * orders,
            "pageInfo": {"hasNextPage": False, "endCursor": "c"},
        }
    }


def per_call_us(work: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median and p95 of one call, in microseconds (after 10% warm-up)."""
    for _ in range(max(10, rounds // 10)):
        work()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        work()
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def schema() -> Any:
    """The served schema of one version (its resolvers are not run here)."""
    from cancelflow.graphql.schema import SCHEMAS

    return SCHEMAS[VERSION], VERSION


def measure(rounds: int) -> dict[str, tuple[float, float]]:
    import anyio
    import anyio.to_thread
    from graphql import get_introspection_query, parse, validate

    from cancelflow.api.shopify_limits import rest_bucket
    from cancelflow.graphql.cost import actual_cost, check_query_limits, requested_cost
    from cancelflow.graphql.limits import admit, settle
    from cancelflow.services.buckets import get_buckets

    figures: dict[str, tuple[float, float]] = {}
    token = f"bench-{uuid.uuid4().hex}"

    def admit_settle() -> None:
        admit(token, 30, now=0.0)  # a fixed clock: the bucket never runs dry, every call does the same work
        settle(token, 30, 0, now=0.0)

    figures["graphql admit + settle (2 Redis calls)"] = per_call_us(admit_settle, rounds)
    spec, buckets = rest_bucket(), get_buckets()
    figures["rest take (1 Redis call)"] = per_call_us(lambda: buckets.take(spec, token, 0.0), rounds)

    async def hops() -> list[float]:
        samples = []
        for _ in range(rounds):
            started = time.perf_counter_ns()
            await anyio.to_thread.run_sync(buckets.take, spec, token, 0.0)
            samples.append((time.perf_counter_ns() - started) / 1000)
        return sorted(samples)

    hop = anyio.run(hops)
    figures["rest take via to_thread (middleware)"] = (statistics.median(hop), hop[int(len(hop) * 0.95) - 1])

    graphql_schema, _ = schema()
    for name, text, variables, data in (
        ("typical query", QUERY, {"first": 50}, _data(20)),
        ("introspection", get_introspection_query(descriptions=True), None, None),
    ):
        document = parse(text)
        figures[f"{name}: validate (graphql-core)"] = per_call_us(
            lambda d=document: validate(graphql_schema, d), rounds
        )

        def before(d: Any = document, v: Any = variables) -> None:
            check_query_limits(graphql_schema, d, None, v)
            requested_cost(graphql_schema, d, None, v)

        figures[f"{name}: limits + requested cost"] = per_call_us(before, rounds)
        if data is not None:
            figures[f"{name}: actual cost (20 orders)"] = per_call_us(
                lambda d=document, v=variables, r=data: actual_cost(graphql_schema, d, None, v, r), rounds
            )
    return figures


def print_figures(rounds: int) -> None:
    """The table `main` prints (bench/api.py prints it beside the accept latencies)."""
    from cancelflow.config import get_settings
    from cancelflow.services.throttle import storage_uri

    store, version = storage_uri(get_settings()), schema()[1]
    print(f"\nrate-limit checks per request (store {store}, schema {version}, {rounds} rounds each):")
    print(f"  {'per request':48} {'p50 us':>9} {'p95 us':>9}")
    for name, (p50, p95) in measure(rounds).items():
        print(f"  {name:48} {p50:9.1f} {p95:9.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    os.environ.setdefault("CANCELFLOW_BROKER_URL", f"{REDIS}/15")
    os.environ.setdefault("CANCELFLOW_DATABASE_URL", "postgresql://unused/none")  # settings only: no database
    print_figures(args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
