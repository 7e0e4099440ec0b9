"""Workflow throughput and latency on one worker, against the no-op ceiling and a bare Celery worker.

In one run, on one broker (Redis, or RabbitMQ with `--broker amqp`), it prints:

* the no-op rate of cancelflow's worker (`workflow.ping`) and of a bare Celery worker (`bench/bare_celery.py`:
  Celery's defaults, one queue, the same broker, a real worker process with the same concurrency), measured
  in alternating rounds, medians and their ratio (target >= 0.8), and cancelflow's once more with a monitor
  watching (task events turned on, as Flower does);
* the idle end-to-end latency: one request at a time, accepting sandbox, message sent -> request completed,
  p50 and p95 (target p50 < 250 ms);
* completed requests/s with every request sent at once, and its ratio to the ceiling of six no-op hops
  (cancelflow's no-op rate / 6, same worker settings; target >= 0.5, aim 0.75);
* CPU per completed request by process, and the worker's RSS growth over the run (target < 20 MB).

    .venv/bin/python bench/workflow.py [--requests 2000] [--concurrency 2] [--broker redis|amqp]
    .venv/bin/python bench/workflow.py --noop-only --set worker_prefetch_multiplier=4 --queues default

`--set name=value` (JSON values) overrides a Celery setting of cancelflow's worker and of this process (the
producer), for measuring a setting before adopting it. Figures from a shared machine are noisy: compare runs
side by side, and prefer the ratios, which are measured within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from tests.harness import Proc, Stack

# submit, validate, route, notify, refund, close: the tasks one request takes (the reply is an HTTP call)
HOPS = 6
ALL_QUEUES = "default,route,money,bulk,intake,webhooks,sweep"


def rss_mb(proc: psutil.Process) -> float:
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def cpu_seconds(stack: Stack, database: str, redis_port: int | None) -> dict[str, float]:
    """CPU seconds used so far by each part: worker parent and children, API, sandboxes, the PostgreSQL
    backends of the bench's database, the broker's Redis (other databases and servers on the machine are
    left out: it is shared)."""
    parts: dict[str, float] = {}

    def add(name: str, proc: psutil.Process) -> None:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            return
        parts[name] = parts.get(name, 0.0) + t.user + t.system

    for name, p in stack.procs.items():
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
    for proc in psutil.process_iter(["name", "cmdline"]):
        name, cmdline = proc.info["name"] or "", " ".join(proc.info["cmdline"] or ())
        if name in ("postgres", "postmaster") and f" {database} " in f"{cmdline} ":
            add("postgresql (bench db)", proc)
        elif name.startswith("redis-server") and redis_port is not None and f":{redis_port}" in cmdline:
            add("redis", proc)
        elif name.startswith(("beam", "erl")) and redis_port is None:
            add("rabbitmq (all vhosts)", proc)
    return parts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        overrides[name.strip()] = json.loads(value)
    return overrides


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--noop", type=int, default=2000, help="no-op tasks per round and worker")
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternating no-op rounds (medians are printed)"
    )
    parser.add_argument("--latency", type=int, default=40, help="requests sent one at a time, idle")
    parser.add_argument("--broker", choices=("redis", "amqp"), default="redis")
    parser.add_argument("--queues", default=ALL_QUEUES, help="the queues cancelflow's worker consumes")
    parser.add_argument("--noop-only", action="store_true", help="only the no-op rates (no workflow)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=JSON", help="override a Celery setting"
    )
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    if overrides:
        from bench.tuned_app import OVERRIDES_ENV

        os.environ[OVERRIDES_ENV] = json.dumps(overrides)

    from bench._env import bench_environment

    workdir = Path(tempfile.mkdtemp(prefix="cf-bench-"))
    with bench_environment(workdir, args.broker) as database_url:
        return run(args, workdir, overrides, database_url)


def start_bare_worker(stack: Stack, concurrency: int) -> Proc:
    """The bare Celery worker, a real process on the same broker; the counters in the same Redis."""
    from tests.harness import PYTHON, Proc, wait_for

    broker = os.environ["CANCELFLOW_BROKER_URL"]
    env = {
        **os.environ,
        "BARE_CELERY_BROKER": broker,
        "BARE_CELERY_COUNTERS": os.environ.get("CANCELFLOW_THROTTLE_URL") or broker,
        "PYTHONPATH": str(ROOT),
    }
    argv = [PYTHON, "-m", "celery", "-A", "bench.bare_celery", "worker", "--loglevel", "INFO"]
    argv += ["--concurrency", str(concurrency), "-n", f"bare-{os.getpid()}@%h", "--without-gossip"]
    argv += ["--without-mingle"]
    proc = Proc("bare-celery", argv, stack.workdir / "logs" / "bare-celery.log", env)
    proc.start()
    wait_for(lambda: "ready." in proc.log_text(), timeout=60, what="bare Celery worker ready")
    return proc


def noop_queue(args: argparse.Namespace) -> str:
    """The queue the no-op tasks go to: the first one cancelflow's worker consumes."""
    return str(args.queues.split(",")[0])


def noop_rates(
    args: argparse.Namespace, stack: Stack, watched: list[float]
) -> tuple[list[float], list[float]]:
    """No-op tasks/s of cancelflow's worker and of the bare one, in alternating rounds.

    Each round fills the worker's queue while the worker does not consume it (remote control: cancel and add
    the consumer), then times the worker draining it: the rate of the consumer alone, not of this process
    publishing (on RabbitMQ every publish of cancelflow's waits for its confirm)."""
    from celery import Celery

    from bench.bare_celery import TASK as BARE_TASK
    from bench.bare_celery import app as bare_app
    from cancelflow.services import counters
    from cancelflow.worker.app import celery_app
    from tests.harness import wait_for

    host = socket.gethostname()

    def rate(app: Celery, task: str, queue: str, node: str) -> float:
        key = f"bench:noop:{uuid.uuid4().hex}"
        answered = app.control.cancel_consumer(queue, destination=[node], reply=True, timeout=10)
        assert answered, f"{node} did not answer cancel_consumer"
        for _ in range(args.noop):
            app.send_task(task, kwargs={"counter_key": key}, queue=queue)
        t0 = time.perf_counter()
        app.control.add_consumer(queue, destination=[node], reply=False)
        wait_for(lambda: counters.get(key) >= args.noop, timeout=600, interval=0.02, what="no-op tasks")
        return args.noop / (time.perf_counter() - t0)

    project: list[float] = []
    bare_rates: list[float] = []
    ours = f"worker-{os.getpid()}@{host}"
    bare = f"bare-{os.getpid()}@{host}"
    for _ in range(args.rounds):
        project.append(rate(celery_app, "workflow.ping", noop_queue(args), ours))
        bare_rates.append(rate(bare_app, BARE_TASK, "celery", bare))
        # What a monitor costs: Flower turns the worker's task events on while it watches (`enable_events`).
        celery_app.control.enable_events(destination=[ours])
        try:
            watched.append(rate(celery_app, "workflow.ping", noop_queue(args), ours))
        finally:
            celery_app.control.disable_events(destination=[ours])
        print(
            f"  no-op round: cancelflow {project[-1]:.0f}/s   bare Celery {bare_rates[-1]:.0f}/s   "
            f"cancelflow with Flower watching {watched[-1]:.0f}/s",
            flush=True,
        )
    return project, bare_rates


def run(args: argparse.Namespace, workdir: Path, overrides: dict[str, Any], database_url: str) -> int:
    from bench.bare_celery import app as bare_app
    from cancelflow.services import counters
    from cancelflow.worker.app import celery_app
    from tests.harness import Stack, wait_for

    celery_app.conf.update(overrides)
    broker = os.environ["CANCELFLOW_BROKER_URL"]
    bare_app.conf.broker_url = broker
    counters_url = os.environ.get("CANCELFLOW_THROTTLE_URL") or broker
    redis_port = urlsplit(counters_url).port or 6379
    database = urlsplit(database_url).path.lstrip("/")

    stack = Stack(
        workdir,
        concurrency=args.concurrency,
        env_overrides={"CANCELFLOW_REDELIVERY_GRACE": "600"},
        queues=args.queues,
        app="bench.tuned_app" if overrides else "cancelflow.worker.app",
    )
    stack.env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), stack.env.get("PYTHONPATH"))))
    bare = None
    try:
        if args.noop_only:
            stack.start_worker(queues=args.queues)
        else:
            svc, orders = prepare(stack, args.requests + args.latency + 100)
            stack.start()
        bare = start_bare_worker(stack, args.concurrency)
        worker = psutil.Process(stack.procs["worker"].popen.pid)  # type: ignore[union-attr]
        # Warm up each worker process (imports, connection pools) before measuring anything.
        warm = f"bench:warm:{uuid.uuid4().hex}"
        for _ in range(50):
            celery_app.send_task("workflow.ping", kwargs={"counter_key": warm}, queue=noop_queue(args))
        wait_for(lambda: counters.get(warm) >= 50, timeout=60, what="warm-up")

        wall0 = datetime.now(UTC)
        print(
            f"broker {args.broker}, worker concurrency {args.concurrency}, queues {args.queues}, "
            f"settings {overrides or 'as configured'}, started {wall0:%H:%M:%S}",
            flush=True,
        )
        watched: list[float] = []
        project, bare_rates = noop_rates(args, stack, watched)
        noop_rate = statistics.median(project)
        bare_rate = statistics.median(bare_rates)
        bare.stop()
        ceiling = noop_rate / HOPS
        if args.noop_only:
            print()
            print_noop(args, noop_rate, bare_rate, project, bare_rates, watched)
            return 0
        figures = workflow(
            args, stack, worker, orders, svc, database, redis_port if args.broker == "redis" else None
        )
        print()
        print_noop(args, noop_rate, bare_rate, project, bare_rates, watched)
        rate = figures["rate"]
        print(f"completed requests/s     {rate:.1f}   ({args.requests} requests sent at once)")
        print(
            f"ratio to no-op ceiling   {rate / ceiling:.2f}   (ceiling = {noop_rate:.0f} no-op tasks/s / {HOPS} hops "
            f"= {ceiling:.1f} requests/s; target >= 0.5, aim 0.75)"
        )
        p50, p95 = figures["idle_p50"], figures["idle_p95"]
        print(
            f"idle end-to-end latency  p50 {p50 * 1000:.0f} ms   p95 {p95 * 1000:.0f} ms   "
            f"({args.latency} requests one at a time; target p50 < 250 ms: {'met' if p50 < 0.25 else 'NOT met'})"
        )
        print(
            f"drain latency            p50 {figures['drain_p50'] * 1000:.0f} ms   p95 {figures['drain_p95'] * 1000:.0f} ms"
            "   (all sent at once: includes the queue)"
        )
        growth = figures["rss_after"] - figures["rss_before"]
        print(
            f"worker RSS               before {figures['rss_before']:.1f} MB   after {figures['rss_after']:.1f} MB   "
            f"growth {growth:+.1f} MB (target < 20 MB: {'met' if growth < 20 else 'NOT met'})"
        )
        print("CPU per completed request (ms), by process:")
        cpu_before, cpu_after = figures["cpu_before"], figures["cpu_after"]
        for name in sorted(cpu_after, key=lambda n: cpu_before.get(n, 0.0) - cpu_after[n]):
            spent = cpu_after[name] - cpu_before.get(name, 0.0)
            if spent > 0.05:
                print(f"  {name:<24} {1000 * spent / args.requests:7.1f}")
    finally:
        if bare is not None:
            bare.stop()
        stack.stop()
    return 0


def print_noop(
    args: argparse.Namespace,
    noop_rate: float,
    bare_rate: float,
    project: list[float],
    bare_rates: list[float],
    watched: list[float],
) -> None:
    ratio = noop_rate / bare_rate
    per_round = statistics.median(p / b for p, b in zip(project, bare_rates, strict=True))
    print(f"cancelflow no-op tasks/s {noop_rate:.0f}   (median of {args.rounds} rounds of {args.noop})")
    print(f"bare Celery no-op/s      {bare_rate:.0f}   (Celery defaults, one queue, same broker)")
    print(
        f"ratio cancelflow/bare    {ratio:.2f}   (per-round median {per_round:.2f}; target >= 0.8: "
        f"{'met' if ratio >= 0.8 else 'NOT met'})"
    )
    if watched:
        print(
            f"  with Flower watching   {statistics.median(watched):.0f}/s, ratio "
            f"{statistics.median(watched) / bare_rate:.2f}   (the worker's task events turned on, as Flower "
            "does while it runs; the workflow below runs unwatched)"
        )


def prepare(stack: Stack, n_orders: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A fulfillment service that accepts at once, `n_orders` orders of one item, and the service's token."""
    from cancelflow.db import transaction
    from cancelflow.services.tokens import ensure_token
    from tests.factories import load, order_payload, service_payload

    token, secret = secrets.token_hex(20), secrets.token_hex(16)
    svc = service_payload(secret=secret)
    svc["callback_url"] = stack.add_service(svc["handle"], token=token, secret=secret, policy="accept")
    orders = [order_payload(service_handle=svc["handle"], quantity=1) for _ in range(n_orders)]
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
    return svc, orders


def workflow(
    args: argparse.Namespace,
    stack: Stack,
    worker: psutil.Process,
    orders: list[dict[str, Any]],
    svc: dict[str, Any],
    database: str,
    redis_port: int | None,
) -> dict[str, Any]:
    from sqlalchemy import func, select

    from cancelflow.db import transaction
    from cancelflow.models import CancellationRequest, Event
    from cancelflow.worker.app import celery_app
    from tests.harness import wait_for

    def completed() -> int:
        with transaction() as session:
            stmt = select(func.count()).select_from(CancellationRequest)
            return int(session.scalar(stmt.where(CancellationRequest.status == "completed")) or 0)

    def submit(order: dict[str, Any], sent: dict[str, float]) -> None:
        cid = uuid.uuid4().hex
        sent[cid] = time.time()
        celery_app.send_task(
            "cancellations.submit",
            kwargs={"client_request_id": cid, "order_item": order["items"][0]["id"], "reason": 1},
        )

    def latencies(sent: dict[str, float]) -> list[float]:
        with transaction() as session:
            rows = session.execute(
                select(CancellationRequest.client_request_id, Event.created_date)
                .join(Event, (Event.entity == "request") & (Event.entity_id == CancellationRequest.id))
                .where(Event.kind == "request.completed")
                .where(CancellationRequest.client_request_id.in_(list(sent)))
            ).all()
        return [created.timestamp() - sent[cid] for cid, created in rows]

    warm_orders, idle_orders, bulk_orders = (
        orders[:100],
        orders[100 : 100 + args.latency],
        orders[100 + args.latency :],
    )
    # A warm-up batch, so that "before" is the worker's steady state (pools, caches).
    for order in warm_orders:
        submit(order, {})
    wait_for(lambda: completed() >= len(warm_orders), timeout=600, interval=0.5, what="warm-up requests")
    rss_before = rss_mb(worker)

    # Idle latency: one request at a time, the next sent once the previous completed.
    idle_sent: dict[str, float] = {}
    done = len(warm_orders)
    for order in idle_orders:
        submit(order, idle_sent)
        done += 1
        wait_for(lambda n=done: completed() >= n, timeout=120, interval=0.01, what="one request")  # type: ignore[misc]
    idle = latencies(idle_sent)

    cpu_before = cpu_seconds(stack, database, redis_port)
    sent: dict[str, float] = {}
    t0 = time.perf_counter()
    for order in bulk_orders:
        submit(order, sent)
    wait_for(lambda: completed() >= done + len(bulk_orders), timeout=3600, interval=0.5, what="all completed")
    elapsed = time.perf_counter() - t0
    cpu_after = cpu_seconds(stack, database, redis_port)
    rss_after = rss_mb(worker)
    drain = latencies(sent)
    return {
        "rate": len(bulk_orders) / elapsed,
        "idle_p50": statistics.median(idle),
        "idle_p95": percentile(idle, 0.95),
        "drain_p50": statistics.median(drain),
        "drain_p95": percentile(drain, 0.95),
        "rss_before": rss_before,
        "rss_after": rss_after,
        "cpu_before": cpu_before,
        "cpu_after": cpu_after,
    }


if __name__ == "__main__":
    raise SystemExit(main())
