"""Accept latency over GraphQL beside REST: the same cancellation-request accept, one fulfillment service.

Imports `--samples` x 2 fulfillment orders with a pending cancellation request, starts the real API under
uvicorn (rate-limit buckets made large, so no call waits) and accepts them one by one over HTTP with httpx,
alternating `POST .../cancellation_request/accept.json` (REST, 2021-07) and
`fulfillmentOrderAcceptCancellationRequest` (GraphQL, 2026-01, selecting the fulfillment order's id,
status and request status and the user errors), after a warm-up of each. Prints p50/p95 of both and the
ratio of the p50s and p95s (target: GraphQL <= 1.5 x REST). Both go through the same service
(`replies.answer_cancellation`); the difference is the GraphQL pipeline (parse, validate, limits, cost,
bucket, execute).

    .venv/bin/python bench/graphql_latency.py [--samples 200]

Called by bench/api.py too. Figures are printed, never asserted; the machine is shared, so read the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ACCEPT = """mutation Accept($id: ID!, $message: String) {
  fulfillmentOrderAcceptCancellationRequest(id: $id, message: $message) {
    fulfillmentOrder { id status requestStatus }
    userErrors { field message }
  }
}"""
WARM_UP = 10


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _pending_orders(count: int) -> tuple[str, list[int]]:
    """A fulfillment service with its token, and `count` fulfillment orders waiting for its answer."""
    from tests.factories import load, order_payload, service_payload, token_key

    service = service_payload()
    load({"fulfillment_services": [service]})
    orders = [
        order_payload(service_handle=service["handle"], request_status="cancellation_requested", quantity=1)
        for _ in range(count)
    ]
    for start in range(0, count, 200):
        load({"orders": orders[start : start + 200]})
    token = token_key("fulfillment_service", fulfillment_service_handle=service["handle"])
    return token, [o["fulfillment_orders"][0]["id"] for o in orders]


def accept_latency(workdir: Path, samples: int) -> dict[str, Any]:
    """Times REST and GraphQL accepts, alternating; returns and prints the figures (milliseconds)."""
    import httpx

    from bench.api import start_api

    token, fo_ids = _pending_orders(2 * (samples + WARM_UP))
    overrides = {
        "CANCELFLOW_SHOPIFY_REST_BUCKET_SIZE": "1000000",
        "CANCELFLOW_GRAPHQL_BUCKET_SIZE": "100000000",
    }
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        api, base = start_api(workdir)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    timings: dict[str, list[float]] = {"REST": [], "GraphQL": []}
    headers = {"X-Shopify-Access-Token": token}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            for index, (rest_id, graphql_id) in enumerate(zip(fo_ids[::2], fo_ids[1::2], strict=True)):
                started = time.perf_counter()
                response = client.post(
                    f"/admin/api/2021-07/fulfillment_orders/{rest_id}/cancellation_request/accept.json",
                    json={"cancellation_request": {"message": "bench"}},
                )
                rest_ms = (time.perf_counter() - started) * 1000
                assert response.status_code == 200, response.text
                started = time.perf_counter()
                response = client.post(
                    "/admin/api/2026-01/graphql.json",
                    json={
                        "query": ACCEPT,
                        "variables": {
                            "id": f"gid://shopify/FulfillmentOrder/{graphql_id}",
                            "message": "bench",
                        },
                        "operationName": None,
                    },
                )
                graphql_ms = (time.perf_counter() - started) * 1000
                body = response.json()
                payload = body["data"]["fulfillmentOrderAcceptCancellationRequest"]
                assert payload["userErrors"] == [], body
                if index >= WARM_UP:
                    timings["REST"].append(rest_ms)
                    timings["GraphQL"].append(graphql_ms)
    finally:
        api.terminate()
        api.wait(timeout=20)
    figures = {name: (_pct(values, 0.5), _pct(values, 0.95)) for name, values in timings.items()}
    rest, graphql = figures["REST"], figures["GraphQL"]
    print(f"\naccept latency over HTTP ({samples} of each, alternating, after {WARM_UP} warm-up), ms:")
    print(f"  {'API':10} {'p50':>8} {'p95':>8} {'mean':>8}")
    for name, values in timings.items():
        p50, p95 = figures[name]
        print(f"  {name:10} {p50:8.1f} {p95:8.1f} {statistics.mean(values):8.1f}")
    ratio50, ratio95 = graphql[0] / rest[0], graphql[1] / rest[1]
    verdict = "ok" if ratio95 <= 1.5 else "over the 1.5 target"
    print(f"  GraphQL / REST: p50 {ratio50:.2f}, p95 {ratio95:.2f} (target <= 1.5: {verdict})")
    return {"figures": figures, "ratio_p50": ratio50, "ratio_p95": ratio95}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    from bench._env import bench_environment

    workdir = Path(tempfile.mkdtemp(prefix="cf-bench-graphql-"))
    with bench_environment(workdir):
        accept_latency(workdir, args.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
