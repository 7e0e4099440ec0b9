"""What one storefront request costs the API, one at a time: CPU, SQL statements, pool checkouts.

`bench/load.py` measures a burst, whose figures move with everything else the machine runs. This bench
measures the cost per request that decides how many of them one core can serve: on a throw-away database
with generated orders (the demo generator) and a storefront token, it

1. starts the API as `cancelflow run` does (`uvicorn --factory cancelflow.api.app:create_app`, one worker
   process) and sends requests one after another over loopback, `GET /healthz`, then the burst's create,
   list (`?status=waiting&limit=10`) and read, and prints the API process's CPU per request of each
   (user + system, ms) and its capacity ratio create : healthz;
2. runs creates in this process through the ASGI app (sync work called inline) counting SQL statements and
   pool checkouts per create, and prints cProfile's top functions by cumulative and own time
   (`--profile N`, 0 to skip).

    PYTHONPATH=. .venv/bin/python bench/create_cost.py [--requests 400] [--profile 300] [--strace]

`--strace` also counts the messages the API process sends to PostgreSQL and Redis per request (`strace`
on it): each is a round trip, and unlike time they do not depend on what else the machine runs.

It runs on a database and a redis-server of its own (`bench/_env.py`).
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._env import bench_environment  # noqa: E402

FIRST_ORDER = 100_000
IBAN = "TR330006100519786457841326"
LIST_QUERY = "/api/v1/cancellation_requests/?status=waiting&limit=10"


def load_data(orders: int) -> tuple[str, list[int]]:
    """Generated orders and a storefront token: (token key, one order item id per cancellable unit)."""
    from sqlalchemy import select

    from cancelflow.config.allowlist import parse_allow_entries
    from cancelflow.db import transaction
    from cancelflow.integrations.outbound import OutboundPolicy
    from cancelflow.models import OrderItem
    from cancelflow.services import demo, importer, tokens

    with transaction() as session:
        services = demo.demo_services(
            session,
            ["sandbox-accept"],
            secret=lambda _: None,
            callback_url=lambda handle: f"http://127.0.0.1:9/{handle}",
            keep_stored=False,
        )
        payload = demo.build_demo_payload(services=services, orders=orders, first_id=FIRST_ORDER)
        importer.import_payload(
            session, payload, outbound_policy=OutboundPolicy(parse_allow_entries("127.0.0.1"))
        )
        _, key = tokens.create_token(session, name="storefront-bench", kind="storefront")
    with transaction() as session:
        rows = session.execute(select(OrderItem.id, OrderItem.quantity - OrderItem.requested_quantity))
        units = [item for item, left in rows for _ in range(left)]
    return key, units


def create_body(item: int) -> dict[str, Any]:
    return {
        "order_item": item,
        "reason": 1,
        "cancellation_type": "cancel",
        "quantity": 1,
        "iban": IBAN,
        "holder_name": "Load Test",
    }


# --- 1. CPU per request of a real API process ------------------------------------------------------------


@contextlib.contextmanager
def api_process(workdir: Path) -> Iterator[tuple[str, int]]:
    import httpx

    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CANCELFLOW_DATA_DIR": str(workdir)}
    log = (workdir / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "cancelflow.api.app:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--no-proxy-headers"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((workdir / "api.log").read_text()[-3000:]) from None
                time.sleep(0.3)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def cpu_of(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def backends_cpu() -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend serving this bench's database."""
    import psutil
    import psycopg2

    conn = psycopg2.connect(os.environ["CANCELFLOW_DATABASE_URL"])
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            pids = [int(row[0]) for row in cur.fetchall()]
    finally:
        conn.close()
    found: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            found[pid] = times.user + times.system
    return found


def sessions_opened() -> int:
    """Connections ever opened to this database (PostgreSQL 14+)."""
    import psycopg2

    conn = psycopg2.connect(os.environ["CANCELFLOW_DATABASE_URL"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            row = cur.fetchone()
            return int(row[0]) if row and row[0] is not None else -1
    finally:
        conn.close()


def per_request(pid: int, n: int, call: Callable[[int], None]) -> tuple[float, float, float]:
    """(ms of the API's CPU, of PostgreSQL's CPU for this database, of wall time) per call, over `n` calls
    made one after another."""
    cpu, pg, wall = cpu_of(pid), backends_cpu(), time.perf_counter()
    for i in range(n):
        call(i)
    wall = time.perf_counter() - wall
    api = cpu_of(pid) - cpu
    pg_after = backends_cpu()
    pg_used = sum(used - pg.get(backend, 0.0) for backend, used in pg_after.items())
    return 1000 * api / n, 1000 * pg_used / n, 1000 * wall / n


def measure_server(key: str, units: list[int], n: int, workdir: Path, *, strace: bool) -> list[int]:
    import httpx

    headers = {"Authorization": f"Token {key}"}
    created: list[int] = []
    with api_process(workdir) as (url, pid), httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(20):  # lazy imports, first connections
            client.get("/healthz")
            client.get(LIST_QUERY, headers=headers)

        def create(i: int) -> None:
            response = client.post(
                "/api/v1/cancellation_requests/",
                json=create_body(units.pop()),
                headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
            )
            assert response.status_code == 201, response.text
            created.append(int(response.json()["id"]))

        def read(i: int) -> None:
            response = client.get(
                f"/api/v1/cancellation_requests/{created[i % len(created)]}/", headers=headers
            )
            assert response.status_code == 200, response.text

        create(0)  # the first create imports what the others use
        sessions = sessions_opened()
        figures = {
            "GET /healthz": per_request(pid, n, lambda i: client.get("/healthz").raise_for_status()),
            "POST create": per_request(pid, n, create),
            "GET list ?status=waiting&limit=10": per_request(
                pid, n, lambda i: client.get(LIST_QUERY, headers=headers).raise_for_status()
            ),
            "GET read one": per_request(pid, n, read),
        }
    opened = sessions_opened() - sessions - 1  # less the count's own
    print(f"\nAPI process, {n} requests of each, one at a time (ms per request; {opened} connections opened)")
    print(f"  {'request':<36} {'API CPU':>8} {'PG CPU':>8} {'wall':>8}")
    for name, (cpu, pg, wall) in figures.items():
        print(f"  {name:<36} {cpu:>8.2f} {pg:>8.2f} {wall:>8.2f}")
    health, create_cpu = figures["GET /healthz"][0], figures["POST create"][0]
    mix = (8 * create_cpu + figures["GET list ?status=waiting&limit=10"][0] + figures["GET read one"][0]) / 10
    print(f"  capacity ratio create : healthz (CPU) {health / create_cpu:.2f}; burst mix 8:1:1 {mix:.2f} ms")
    if strace:
        with api_process(workdir) as (url, pid), httpx.Client(base_url=url, timeout=30) as client:
            client.get("/healthz")
            calls: dict[str, Callable[[int], None]] = {
                "GET /healthz": lambda i: client.get("/healthz").raise_for_status(),
                "POST create": create,
                "GET list": lambda i: client.get(LIST_QUERY, headers=headers).raise_for_status(),
                "GET read one": read,
            }
            print("\nmessages sent per request (strace of the API process; each one a round trip)")
            for name, call in calls.items():
                call(0)  # the first of each kind imports and connects
                pg, redis = count_sends(pid, workdir / "strace.out", call, 50)
                print(f"  {name:<36} PostgreSQL {pg / 50:5.1f}   Redis {redis / 50:4.1f}")
    return created


def count_sends(pid: int, out: Path, call: Callable[[int], None], n: int) -> tuple[int, int]:
    """`sendto` calls of `pid` during `n` calls, to PostgreSQL and to Redis (RESP commands start with `*`);
    the API's HTTP answers are written with other calls."""
    import re
    import shutil

    strace = shutil.which("strace") or "/usr/bin/strace"
    tracer = subprocess.Popen(
        [strace, "-f", "-e", "trace=sendto", "-o", str(out), "-p", str(pid)], stderr=subprocess.DEVNULL
    )
    time.sleep(1.0)
    try:
        for i in range(n):
            call(i)
        time.sleep(0.5)
    finally:
        tracer.terminate()
        tracer.wait()
    sends = re.findall(r'sendto\(\d+, "(.)', out.read_text())
    redis = sum(1 for first in sends if first == "*")
    return len(sends) - redis, redis


# --- 2. statements, checkouts and a profile of the create, in this process ------------------------------


def profile_creates(key: str, units: list[int], n: int, top: int, save: str | None) -> None:
    """Creates through the ASGI app in this thread (sync endpoints and dependencies called inline instead
    of on anyio's worker threads, so one cProfile sees all of it), with statements and checkouts counted."""
    import asyncio

    import anyio.to_thread
    import httpx
    from sqlalchemy import event

    from cancelflow.api.app import create_app
    from cancelflow.db import get_engine

    async def inline(func: Callable[..., Any], *args: Any, **_: Any) -> Any:
        return func(*args)

    anyio.to_thread.run_sync = inline  # type: ignore[assignment]
    engine = get_engine(None)  # the key `transaction()` uses
    counts = {"statements": 0, "checkouts": 0}
    seen: list[str] = []

    def on_statement(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        counts["statements"] += 1
        seen.append(" ".join(statement.split())[:150])

    def on_checkout(*_: Any) -> None:
        counts["checkouts"] += 1

    event.listen(engine, "before_cursor_execute", on_statement)
    event.listen(engine.pool, "checkout", on_checkout)
    event.listen(
        engine.pool, "connect", lambda *_: counts.__setitem__("connects", counts.get("connects", 0) + 1)
    )
    headers = {"Authorization": f"Token {key}"}
    app = create_app()

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

            async def create() -> None:
                response = await client.post(
                    "/api/v1/cancellation_requests/",
                    json=create_body(units.pop()),
                    headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
                )
                assert response.status_code == 201, response.text

            for _ in range(10):
                await create()
            counts.update(statements=0, checkouts=0)
            seen.clear()
            await create()
            print(
                f"\none create: {counts['statements']} SQL statements (BEGIN, COMMIT, ROLLBACK and pings not "
                f"counted), {counts['checkouts']} pool checkouts"
            )
            for statement in seen:
                print(f"  {statement}")
            for name, path in (("list", LIST_QUERY), ("read", "/api/v1/cancellation_requests/{id}/")):
                if name == "read":
                    listed = (await client.get(LIST_QUERY, headers=headers)).json()["results"]
                    path = path.format(id=listed[0]["id"])
                counts.update(statements=0, checkouts=0)
                seen.clear()
                (await client.get(path, headers=headers)).raise_for_status()
                print(
                    f"one {name}: {counts['statements']} SQL statements, {counts['checkouts']} pool checkouts"
                )
                for statement in seen:
                    print(f"  {statement}")
            profiler = cProfile.Profile()
            cpu = time.process_time()
            profiler.enable()
            for _ in range(n):
                await create()
            profiler.disable()
            cpu = time.process_time() - cpu
            print(
                f"in-process create (ASGI, profiled): {1000 * cpu / n:.2f} ms CPU each over {n}; "
                f"connections opened in all: {counts.get('connects', 0)}"
            )
            if save:
                profiler.dump_stats(save)
            print_by_package(pstats.Stats(profiler), n)
            for order in ("cumulative", "tottime"):
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(top)
                print(f"\n--- top {top} by {order} ---")
                print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))

    asyncio.run(run())


PACKAGES = (
    "cancelflow", "sqlalchemy", "psycopg2", "fastapi", "starlette", "pydantic", "kombu", "celery", "redis",
    "structlog", "httpx", "anyio", "json", "logging", "asyncio",
)  # fmt: skip


def print_by_package(stats: pstats.Stats, n: int) -> None:
    """Own time (profiled, ms per create) by the package of the function: where the CPU goes."""
    totals: dict[str, float] = {}
    for (filename, _, name), (_, _, own, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        if filename == "~":
            label = "psycopg2 (C: waits on PostgreSQL)" if "psycopg2" in name else f"builtin {name}"
            label = label if "psycopg2" in name or "socket" in name else "builtins (other)"
        else:
            parts = Path(filename).parts
            label = next((p for p in PACKAGES if p in parts or f"{p}.py" in parts), "other")
        totals[label] = totals.get(label, 0.0) + own
    print("\nown time by package, ms per create (profiled: inflated, compare relatively)")
    for label, own in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {label:<40} {1000 * own / n:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=400, help="requests of each kind sent to the API process"
    )
    parser.add_argument("--profile", type=int, default=300, help="creates profiled in this process (0: none)")
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--orders", type=int, default=1500)
    parser.add_argument("--save", help="write the profile here (pstats)")
    parser.add_argument("--strace", action="store_true", help="count the messages sent per request (strace)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cf-create-cost-") as tmp, bench_environment(Path(tmp)):
        key, units = load_data(args.orders)
        print(f"{len(units)} order item units to cancel")
        if args.requests:
            measure_server(key, units, args.requests, Path(tmp), strace=args.strace)
        if args.profile:
            profile_creates(key, units, args.profile, args.top, args.save)


if __name__ == "__main__":
    main()
