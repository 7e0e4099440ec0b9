"""Workflow throughput: N requests through the whole flow on one worker, against the raw Celery ceiling.

Prints completed requests/s, p50/p95 end-to-end latency (message sent -> request completed), worker
RSS before and after, the raw ceiling (no-op tasks/s on the same broker and worker settings) divided
by the task hops one request takes, and the ratio of the two.

    .venv/bin/python bench/workflow.py [--requests 2000] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# submit, validate, route, notify, refund, close: the tasks one request takes (the reply is an HTTP call)
HOPS = 6


def rss_mb(proc: psutil.Process) -> float:
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def cpu_seconds(stack: object) -> dict[str, float]:
    """CPU seconds used so far by each part: worker parent and children, API, sandboxes, PostgreSQL, Redis."""
    parts: dict[str, float] = {}

    def add(name: str, proc: psutil.Process) -> None:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            return
        parts[name] = parts.get(name, 0.0) + t.user + t.system

    for name, p in stack.procs.items():  # type: ignore[attr-defined]
        if p.popen is None:
            continue
        try:
            proc = psutil.Process(p.popen.pid)
        except psutil.NoSuchProcess:
            continue
        add(name, proc)
        if name == "worker":
            for child in proc.children(recursive=True):
                add("worker children", child)
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("postgres", "postmaster"):
            add("postgresql", proc)
        elif proc.info["name"] and proc.info["name"].startswith("redis-server"):
            add("redis", proc)
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--noop", type=int, default=4000, help="no-op tasks for the raw ceiling")
    args = parser.parse_args()

    from bench._env import bench_environment

    workdir = Path(tempfile.mkdtemp(prefix="cf-bench-"))
    with bench_environment(workdir):
        return run(args, workdir)


def run(args: argparse.Namespace, workdir: Path) -> int:
    from sqlalchemy import func, select

    from cancelflow.db import transaction
    from cancelflow.models import CancellationRequest, Event
    from cancelflow.services import counters
    from cancelflow.services.tokens import ensure_token
    from cancelflow.worker.app import celery_app
    from tests.factories import load, order_payload, service_payload
    from tests.harness import Stack, wait_for

    stack = Stack(
        workdir,
        concurrency=args.concurrency,
        env_overrides={"CANCELFLOW_REDELIVERY_GRACE": "600"},
    )
    token, secret = secrets.token_hex(20), secrets.token_hex(16)
    svc = service_payload(secret=secret)
    svc["callback_url"] = stack.add_service(svc["handle"], token=token, secret=secret, policy="accept")
    orders = [order_payload(service_handle=svc["handle"], quantity=1) for _ in range(args.requests)]
    print(f"loading {len(orders)} orders ...", flush=True)
    for start in range(0, len(orders), 500):
        load({"fulfillment_services": [svc], "orders": orders[start : start + 500]})
    with transaction() as session:
        ensure_token(
            session,
            name="bench-service",
            kind="fulfillment_service",
            key=token,
            fulfillment_service_handle=svc["handle"],
        )
    try:
        stack.start()
        worker = psutil.Process(stack.procs["worker"].popen.pid)  # type: ignore[union-attr]
        # Warm up each worker process (imports, connection pools) before measuring anything.
        warm = f"bench:warm:{uuid.uuid4().hex}"
        for _ in range(50):
            celery_app.send_task("workflow.ping", kwargs={"counter_key": warm})
        wait_for(lambda: counters.get(warm) >= 50, timeout=60, what="warm-up")

        # 1. The raw ceiling: no-op tasks per second through the same broker and worker.
        key = f"bench:noop:{uuid.uuid4().hex}"
        t0 = time.perf_counter()
        for _ in range(args.noop):
            celery_app.send_task("workflow.ping", kwargs={"counter_key": key})
        wait_for(lambda: counters.get(key) >= args.noop, timeout=600, interval=0.05, what="no-op tasks")
        noop_rate = args.noop / (time.perf_counter() - t0)
        ceiling = noop_rate / HOPS

        # 2. The workflow, after a warm-up batch so "before" is the worker's steady state (pools, caches).
        def completed() -> int:
            with transaction() as session:
                stmt = select(func.count()).select_from(CancellationRequest)
                return int(session.scalar(stmt.where(CancellationRequest.status == "completed")) or 0)

        warm_orders = [order_payload(service_handle=svc["handle"], quantity=1) for _ in range(100)]
        load({"fulfillment_services": [svc], "orders": warm_orders})
        for order in warm_orders:
            celery_app.send_task(
                "cancellations.submit",
                kwargs={
                    "client_request_id": uuid.uuid4().hex,
                    "order_item": order["items"][0]["id"],
                    "reason": 1,
                },
            )
        wait_for(lambda: completed() >= len(warm_orders), timeout=600, interval=0.5, what="warm-up requests")
        rss_before = rss_mb(worker)
        cpu_before = cpu_seconds(stack)
        sent: dict[str, float] = {}
        t0 = time.perf_counter()
        wall0 = datetime.now(UTC)
        for order in orders:
            cid = uuid.uuid4().hex
            sent[cid] = time.time()
            celery_app.send_task(
                "cancellations.submit",
                kwargs={"client_request_id": cid, "order_item": order["items"][0]["id"], "reason": 1},
            )

        wait_for(
            lambda: completed() >= args.requests + len(warm_orders),
            timeout=3600,
            interval=0.5,
            what="all completed",
        )
        elapsed = time.perf_counter() - t0
        cpu_after = cpu_seconds(stack)
        rss_after = rss_mb(worker)
        with transaction() as session:
            rows = session.execute(
                select(CancellationRequest.client_request_id, Event.created_date)
                .join(Event, (Event.entity == "request") & (Event.entity_id == CancellationRequest.id))
                .where(Event.kind == "request.completed")
            ).all()
        latencies = sorted(created.timestamp() - sent[cid] for cid, created in rows if cid in sent)
        # All requests are sent at once, so latency includes the queue: it measures drain time, not one request.
        rate = args.requests / elapsed
        p50 = statistics.median(latencies)
        p95 = latencies[int(0.95 * (len(latencies) - 1))]
        print()
        print(
            f"requests                 {args.requests} (worker concurrency {args.concurrency}, started {wall0:%H:%M:%S})"
        )
        print(f"completed requests/s     {rate:.1f}")
        print(f"end-to-end latency       p50 {p50 * 1000:.0f} ms   p95 {p95 * 1000:.0f} ms")
        print(
            f"worker RSS               before {rss_before:.1f} MB   after {rss_after:.1f} MB   "
            f"growth {rss_after - rss_before:+.1f} MB"
        )
        print(f"raw Celery no-op tasks/s {noop_rate:.1f}   / {HOPS} hops = ceiling {ceiling:.1f} requests/s")
        print(f"ratio (workflow/ceiling) {rate / ceiling:.2f}   (target >= 0.5)")
        print("CPU per completed request (ms), by process:")
        for name in sorted(cpu_after, key=lambda n: cpu_before.get(n, 0.0) - cpu_after[n]):
            spent = cpu_after[name] - cpu_before.get(name, 0.0)
            if spent > 0.05:
                print(f"  {name:<22} {1000 * spent / args.requests:7.1f}")
        print(f"RSS growth target        < 20 MB: {'met' if rss_after - rss_before < 20 else 'NOT met'}")
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
