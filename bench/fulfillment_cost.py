"""What the fulfillment service's pull and reply cost the API: CPU and SQL statements per request.

The sandbox fulfillment service (`cancelflow.sandbox.fulfillment`) answers each notification by pulling
`GET /admin/api/<v>/assigned_fulfillment_orders.json?assignment_status=cancellation_requested&limit=250`
and accepting what it lists (`POST .../fulfillment_orders/<id>/cancellation_request/accept.json`); while
many requests are in flight, each pull lists every fulfillment order still waiting. On a throw-away
database (`bench/_env.py`) this bench makes `--orders` routed plans (an order of one item, its request
approved and routed by the real services: a fulfillment order `cancellation_requested` with its merchant
request) for one service, then, through the ASGI app in this process (sync endpoints called inline, so the
CPU is this thread's):

1. pulls 5 rounds of `--pulls` times with pages of 250, 50 and 1 fulfillment orders: ms of CPU per pull
   (the rounds' median) and per fulfillment order listed, and SQL statements per pull;
2. accepts half the first page, one at a time, in 5 rounds: ms of CPU (the median) and SQL statements
   per accept;
3. with `--profile`, pulls again and accepts a second batch under cProfile and prints the top functions;
4. with `--server`, sends pulls (pages of 250, 50, 5 and 1) and 100 accepts to a real API process
   (`uvicorn`) and prints its CPU per request.

    PYTHONPATH=. .venv/bin/python bench/fulfillment_cost.py [--orders 500] [--pulls 30] [--profile] [--server]

After-commit sends (the worker's next steps) are kept in a list, not sent: the broker is not measured.
Figures are printed, never asserted; compare runs side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._env import bench_environment  # noqa: E402

VERSION = "2021-07"
ROUNDS = 5  # each figure is the median of this many rounds
PULL = f"/admin/api/{VERSION}/assigned_fulfillment_orders.json"
ACCEPT = f"/admin/api/{VERSION}/fulfillment_orders/{{id}}/cancellation_request/accept.json"


def load_data(orders: int) -> str:
    """`orders` routed plans for one service: the service token's key."""
    from cancelflow.db import transaction
    from tests.factories import load, routed_plan, service_payload, token_key

    service = service_payload(handle="bench-accept")
    load({"fulfillment_services": [service]})
    for start in range(0, orders, 50):
        with transaction() as session:
            for _ in range(min(50, orders - start)):
                routed_plan(session, service)
    return token_key("fulfillment_service", fulfillment_service_handle=service["handle"])


def run(key: str, pulls: int, profile: bool, top: int) -> None:
    import anyio.to_thread
    import httpx
    from sqlalchemy import event

    from cancelflow.api.app import create_app
    from cancelflow.db import get_engine

    async def inline(func: Callable[..., Any], *args: Any, **_: Any) -> Any:
        return func(*args)

    anyio.to_thread.run_sync = inline  # type: ignore[assignment]
    engine = get_engine(None)
    statements: list[str] = []
    event.listen(
        engine, "before_cursor_execute", lambda c, cur, stmt, *_: statements.append(" ".join(stmt.split()))
    )
    headers = {"X-Shopify-Access-Token": key, "Accept": "application/json"}
    app = create_app()

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

            async def pull(limit: int, since_id: int | None = None) -> list[dict[str, Any]]:
                params: dict[str, Any] = {"assignment_status": "cancellation_requested", "limit": limit}
                if since_id is not None:
                    params["since_id"] = since_id
                response = await client.get(PULL, params=params, headers=headers)
                assert response.status_code == 200, response.text
                orders: list[dict[str, Any]] = response.json()["fulfillment_orders"]
                return orders

            async def accept(fo_id: int) -> None:
                body = {"cancellation_request": {"message": "Accepted by bench"}}
                response = await client.post(ACCEPT.format(id=fo_id), json=body, headers=headers)
                assert response.status_code == 200, response.text

            for _ in range(5):  # lazy imports, first connections
                await pull(250)
            waiting = len(await pull(250))
            print(f"\n{waiting} fulfillment orders waiting in the first page")
            print(f"pulls, {pulls} of each, one at a time")
            print(f"  {'page':>6} {'ms CPU/pull':>12} {'ms CPU/order':>13} {'statements':>11} {'bytes':>8}")
            for limit in (250, 50, 1):
                statements.clear()
                size = len((await client.get(PULL, params={"assignment_status": "cancellation_requested",
                                                            "limit": limit}, headers=headers)).content)  # fmt: skip
                count = len(statements)
                one_pull = list(statements)
                listed = len(await pull(limit))
                params = {"assignment_status": "cancellation_requested", "limit": limit}
                rounds = []
                for _ in range(ROUNDS):
                    cpu = time.process_time()
                    for _ in range(pulls):  # the body is not parsed: the client's work is not the API's
                        (await client.get(PULL, params=params, headers=headers)).raise_for_status()
                    rounds.append((time.process_time() - cpu) / pulls)
                cpu = statistics.median(rounds)
                print(f"  {listed:>6} {1000 * cpu:>12.2f} {1000 * cpu / listed:>13.3f} {count:>11} {size:>8}")
            for statement in one_pull:
                print(f"    {statement[:160]}")

            ids = [int(fo["id"]) for fo in await pull(250)]
            half = ids[: len(ids) // 2]
            statements.clear()
            await accept(half[0])
            count = len(statements)
            shown = list(statements)
            rounds = []
            batch = (len(half) - 1) // ROUNDS
            for start in range(1, 1 + batch * ROUNDS, batch):
                cpu = time.process_time()
                for fo_id in half[start : start + batch]:
                    await accept(fo_id)
                rounds.append((time.process_time() - cpu) / batch)
            cpu = statistics.median(rounds)
            print(
                f"\naccepts: {1000 * cpu:.2f} ms CPU each (median of {ROUNDS} rounds of {batch}); "
                f"{count} statements in one:"
            )
            for statement in shown:
                print(f"    {statement[:160]}")

            if profile:
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(pulls):
                    await pull(250)
                for fo_id in ids[len(half) :]:
                    await accept(fo_id)
                profiler.disable()
                for order in ("cumulative", "tottime"):
                    out = io.StringIO()
                    pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(top)
                    print(
                        f"\n--- top {top} by {order} ({pulls} pulls of 250, {len(ids) - len(half)} accepts) ---"
                    )
                    print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))

    asyncio.run(main())


def run_server(key: str, pulls: int, accepts: int, workdir: Path) -> None:
    """The same requests to a real API process (`uvicorn`, as `cancelflow run` starts it) over loopback:
    its CPU per request (user + system), uvicorn's HTTP work and the after-commit sends included."""
    import httpx

    from bench.create_cost import api_process, cpu_of

    headers = {"X-Shopify-Access-Token": key, "Accept": "application/json"}
    with api_process(workdir) as (url, pid), httpx.Client(base_url=url, timeout=60) as client:

        def pull(limit: int) -> httpx.Response:
            params = {"assignment_status": "cancellation_requested", "limit": limit}
            response = client.get(PULL, params=params, headers=headers)
            response.raise_for_status()
            return response

        for _ in range(5):
            pull(250)
        print(f"\nAPI process (uvicorn), CPU per request, median of {ROUNDS} rounds")
        for limit in (250, 50, 5, 1):
            rounds = []
            for _ in range(ROUNDS):
                cpu = cpu_of(pid)
                for _ in range(pulls):
                    pull(limit)
                rounds.append((cpu_of(pid) - cpu) / pulls)
            print(f"  pull of {limit:>3}: {1000 * statistics.median(rounds):6.2f} ms")
        ids = [int(fo["id"]) for fo in pull(250).json()["fulfillment_orders"]][:accepts]
        batch = len(ids) // ROUNDS
        rounds = []
        for start in range(0, batch * ROUNDS, batch):
            cpu = cpu_of(pid)
            for fo_id in ids[start : start + batch]:
                body = {"cancellation_request": {"message": "Accepted by bench"}}
                response = client.post(ACCEPT.format(id=fo_id), json=body, headers=headers)
                assert response.status_code == 200, response.text
            rounds.append((cpu_of(pid) - cpu) / batch)
        print(f"  accept:      {1000 * statistics.median(rounds):6.2f} ms (rounds of {batch})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=500, help="routed plans waiting for the service")
    parser.add_argument("--pulls", type=int, default=30, help="pulls of each page size timed")
    parser.add_argument("--profile", action="store_true", help="profile pulls and the second half's accepts")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--server", action="store_true", help="also measure a real API process (accepts from the second page)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cf-fulfillment-cost-") as tmp, bench_environment(Path(tmp)):
        from cancelflow.services import after_commit

        sent: list[Any] = []
        after_commit.set_sender(sent.append)
        started = time.monotonic()
        key = load_data(args.orders)
        print(f"{args.orders} routed plans made in {time.monotonic() - started:.1f} s")
        run(key, args.pulls, args.profile, args.top)
        if args.server:
            run_server(key, args.pulls, 100, Path(tmp))


if __name__ == "__main__":
    main()
