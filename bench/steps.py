"""CPU per workflow step, in-process: the service functions a worker runs, without Celery or HTTP.

Loads N orders, then drives each request through submit, validate, route, the service's accept, the
loyalty credit and close, one transaction per step as a worker would, and prints the CPU milliseconds
and SQL statements each step costs. Use it to see what a change to a step saves before running
bench/workflow.py.

    .venv/bin/python bench/steps.py [--requests 300]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--show-sql", action="store_true", help="print the statements of the last request")
    args = parser.parse_args()
    from bench._env import bench_environment

    with bench_environment(Path(tempfile.mkdtemp(prefix="cf-bench-"))):
        return run(args.requests, show_sql=args.show_sql)


def run(n: int, *, show_sql: bool = False) -> int:
    from sqlalchemy import event

    from cancelflow.db import get_engine, transaction
    from cancelflow.services import after_commit
    from tests.factories import load, order_payload, service_payload
    from tests.inprocess import request_steps

    sent: list[after_commit.Send] = []
    after_commit.set_sender(sent.append)
    svc = service_payload(secret=secrets.token_hex(8))
    orders = [order_payload(service_handle=svc["handle"], quantity=1) for _ in range(n + 20)]
    load({"fulfillment_services": [svc], "orders": orders})

    statements: Counter[str] = Counter()
    cpu: defaultdict[str, float] = defaultdict(float)
    wall: defaultdict[str, float] = defaultdict(float)
    current = ["-"]
    last = [False]

    @event.listens_for(get_engine(None), "before_cursor_execute")
    def _count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements[current[0]] += 1
        if show_sql and last[0]:
            print(f"[{current[0]}] {' '.join(statement.split())[:160]}")

    for i, order in enumerate(orders):
        last[0] = i == len(orders) - 1
        if i == 20:  # the first 20 warmed the caches: measure from here
            cpu.clear()
            wall.clear()
            statements.clear()
        for name, work in request_steps(order["items"][0]["id"], sent):
            current[0] = name
            t0, w0 = time.process_time(), time.perf_counter()
            with transaction() as session:
                work(session)
            cpu[name] += time.process_time() - t0
            wall[name] += time.perf_counter() - w0
            current[0] = "-"
    print(f"{n} requests, in-process, per request: CPU ms, wall ms (with PostgreSQL's time), SQL statements")
    total_cpu = total_wall = total_sql = 0.0
    for name in cpu:
        ms, wall_ms, sql = 1000 * cpu[name] / n, 1000 * wall[name] / n, statements[name] / n
        total_cpu, total_wall, total_sql = total_cpu + ms, total_wall + wall_ms, total_sql + sql
        print(f"  {name:<16} {ms:6.2f} cpu  {wall_ms:6.2f} wall  {sql:5.1f} statements")
    print(f"  {'total':<16} {total_cpu:6.2f} cpu  {total_wall:6.2f} wall  {total_sql:5.1f} statements")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
