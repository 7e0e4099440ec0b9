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
import uuid
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
    from sqlalchemy import event, select

    from cancelflow.db import get_engine, transaction
    from cancelflow.models import WorkflowStep
    from cancelflow.models.enums import StepKind
    from cancelflow.services import intake, jobs, steps, workflow
    from tests.factories import load, order_payload, service_payload

    sent: list[jobs.Send] = []
    jobs.set_sender(sent.append)
    svc = service_payload(secret=secrets.token_hex(8))
    orders = [order_payload(service_handle=svc["handle"], quantity=1) for _ in range(n + 20)]
    load({"fulfillment_services": [svc], "orders": orders})

    statements: Counter[str] = Counter()
    current = ["-"]

    @event.listens_for(get_engine(None), "before_cursor_execute")
    def _count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements[current[0]] += 1
        if show_sql and last[0]:
            print(f"[{current[0]}] {' '.join(statement.split())[:160]}")

    last = [False]

    cpu: defaultdict[str, float] = defaultdict(float)
    wall: defaultdict[str, float] = defaultdict(float)

    def timed(name: str, fn, *a):  # type: ignore[no-untyped-def]
        current[0] = name
        t0, w0 = time.process_time(), time.perf_counter()
        with transaction() as session:
            out = fn(session, *a)
        cpu[name] += time.process_time() - t0
        wall[name] += time.perf_counter() - w0
        current[0] = "-"
        return out

    def step_of(kind: StepKind) -> int:
        send = next(s for s in sent if s.task == steps.TASK_FOR_KIND[kind])
        sent.clear()
        return send.args[0]

    def run_step(session, step_id, handler):  # type: ignore[no-untyped-def]
        handler(session, steps.claim(session, step_id))

    def submit(session, item_id):  # type: ignore[no-untyped-def]
        message = {
            "client_request_id": uuid.uuid4().hex,
            "order_item": item_id,
            "reason": 1,
            "fully_refund_as_loyalty_money": True,
        }
        return intake.submit(session, message)

    def accept(session, fo_id):  # type: ignore[no-untyped-def]
        return workflow.answer_cancellation(session, fo_id, decision="accept", message=None, service_id=None)

    def notify(session, step_id):  # type: ignore[no-untyped-def]
        # the HTTP call is left out: claim and finish, as notify_step does around it
        steps.finish(session, steps.claim(session, step_id), {"notified": "bench"})

    for i, order in enumerate(orders):
        last[0] = i == len(orders) - 1
        measure = i >= 20  # the first 20 warm the caches
        if not measure:
            cpu.clear()
            wall.clear()
            statements.clear()
        sent.clear()
        timed("submit", submit, order["items"][0]["id"])
        timed("validate", run_step, step_of(StepKind.validate), workflow.validate_step)
        timed("route", run_step, step_of(StepKind.route), workflow.route_step)
        notify_id = step_of(StepKind.notify)
        timed("notify", notify, notify_id)
        with transaction() as session:
            fo_id = session.scalar(
                select(WorkflowStep.fulfillment_order_id).where(WorkflowStep.id == notify_id)
            )
        timed("accept (API)", accept, fo_id)
        timed("loyalty credit", run_step, step_of(StepKind.loyalty_credit), workflow.money_step)
        timed("close", run_step, step_of(StepKind.close), workflow.close_step)
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
