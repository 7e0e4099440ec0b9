"""A storefront burst over HTTP: locust against the stack `make run` starts.

Starts `cancelflow run` (API, workers, beat, Flower, both sandboxes) on a throw-away database and a private
Redis db (`bench._env`), imports a data set of orders whose fulfillment orders belong to the accepting
sandbox service, and runs locust headless on loopback in two phases against the same server:

1. the baseline: N users asking only `GET /healthz` (a request with one database round trip and no work);
2. the burst: N users (default 50) for `--duration` seconds (default 60), each creating cancellation
   requests with `POST /api/v1/cancellation_requests/` (a unique `Idempotency-Key`, an order item unit no
   other create takes, so each is created), listing the waiting ones (`?status=waiting&limit=10`) and
   reading one it created, by weights 8:1:1 (`--weights`).

Then it waits for every request created in the burst to finish its workflow (completed, rejected, or a
failed plan) and prints: per endpoint requests/s, p50/p95/p99 and errors; the ratio of create throughput
(in the burst) to the healthz baseline (target >= 0.25); create p95 (target < 150 ms at 50 users); errors
(target 0); how long after the load stopped the last created request completed (target < 60 s for a 60 s
burst at 50 users) and how many had completed 60 s after it; and the CPU each process of the stack used
during the burst (% of one core).

    PYTHONPATH=. .venv/bin/python bench/load.py [--users 50] [--duration 60] [--api-workers N]

`CANCELFLOW_BENCH_REDIS` names the Redis server (db 15 is flushed and used), `CANCELFLOW_BENCH_ADMIN_DB`
the PostgreSQL maintenance database. Figures are printed, never asserted; on a shared machine they are
noisy, so compare runs made side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._env import bench_environment  # noqa: E402

LOCUSTFILE = Path(__file__).resolve().parent / "load_locustfile.py"
FIRST_ORDER = 100_000  # the bench's orders start here, above the demo data `cancelflow run` loads
ACCEPTING = "sandbox-accept"
STARTUP_TIMEOUT = 240.0
CREATE = "POST /api/v1/cancellation_requests/"
HEALTHZ = "GET /healthz"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the stack ----------------------------------------------------------------------------------------


@dataclass
class Stack:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    api_url: str
    sandbox_port: int
    log: Path

    def credentials(self) -> dict[str, Any]:
        creds: dict[str, Any] = json.loads((self.data_dir / "credentials.json").read_text())
        return creds


@contextlib.contextmanager
def running_stack(workdir: Path, *, api_workers: int | None) -> Iterator[Stack]:
    """`cancelflow run` on the database and broker `bench_environment` set up, on free ports."""
    data_dir = workdir / "data"
    ports = {name: free_port() for name in ("API", "FLOWER", "SANDBOX_FULFILLMENT", "SANDBOX_GATEWAY")}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "CANCELFLOW_DATA_DIR": str(data_dir),
        **{f"CANCELFLOW_{name}_PORT": str(port) for name, port in ports.items()},
    }
    env.pop("CANCELFLOW_OUTBOUND_ALLOW", None)  # `cancelflow run` allows its own sandbox
    if api_workers is not None:
        env["CANCELFLOW_API_WORKERS"] = str(api_workers)
    log = workdir / "cancelflow-run.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cancelflow.cli.main", "run"],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack = Stack(proc, data_dir, f"http://127.0.0.1:{ports['API']}", ports["SANDBOX_FULFILLMENT"], log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not (data_dir / "stack.json").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cancelflow run did not start; see {log}:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield stack
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # it stops its children, each in its own group
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def import_orders(url: str, orders: int, sandbox_port: int) -> dict[str, int]:
    """`orders` generated orders (the demo's generator) whose fulfillment orders all belong to the
    accepting sandbox service: every request made on them can complete."""
    from cancelflow.config.allowlist import parse_allow_entries
    from cancelflow.db import transaction
    from cancelflow.integrations.outbound import OutboundPolicy
    from cancelflow.services import demo, importer

    with transaction(url) as session:
        services = demo.demo_services(
            session,
            [ACCEPTING],
            secret=lambda _: None,
            callback_url=lambda handle: f"http://127.0.0.1:{sandbox_port}/{handle}",
            keep_stored=True,  # the one `cancelflow run` made, with the secret its sandbox knows
        )
        payload = demo.build_demo_payload(services=services, orders=orders, first_id=FIRST_ORDER)
        policy = OutboundPolicy(parse_allow_entries(f"127.0.0.1:{sandbox_port}"))
        return importer.import_payload(session, payload, outbound_policy=policy)


def cancellable_units(url: str, seed: int = 1) -> list[int]:
    """One entry per unit still cancellable on the bench's orders (an item of quantity 3 thrice), shuffled
    so concurrent creates rarely wait on the same order's lock."""
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT id, quantity - requested_quantity FROM order_items WHERE order_id >= %s",
                (FIRST_ORDER,),
            )
            units = [item for item, left in cur.fetchall() for _ in range(left)]
    finally:
        conn.close()
    random.Random(seed).shuffle(units)
    return units


# --- locust -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointStats:
    name: str
    requests: int
    failures: int
    rps: float
    p50: float
    p95: float
    p99: float


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def run_locust(
    user_class: str, *, host: str, users: int, seconds: int, workdir: Path, env: Mapping[str, str]
) -> tuple[dict[str, EndpointStats], list[int]]:
    """One headless locust run of `user_class`: its per-endpoint figures and the ids it created."""
    results = workdir / f"locust-{user_class}.json"
    argv = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--stop-timeout", "10",
        "--host", host, "--exit-code-on-error", "0", "--loglevel", "WARNING", user_class,
    ]  # fmt: skip
    with (workdir / f"locust-{user_class}.log").open("wb") as fh:
        subprocess.run(
            argv,
            env={**os.environ, **env, "LOAD_RESULTS": str(results)},
            stdout=fh,
            stderr=subprocess.STDOUT,
            check=True,
        )
    data = json.loads(results.read_text())
    first, last = data["span"] or (0.0, 1.0)
    wall = max(1e-3, last - first)
    stats: dict[str, EndpointStats] = {}
    for name, times in sorted(data["times"].items(), key=lambda kv: -len(kv[1])):
        failures = sum(data["errors"].get(name, {}).values())
        stats[name] = EndpointStats(
            name, len(times), failures, len(times) / wall, pct(times, 0.5), pct(times, 0.95), pct(times, 0.99)
        )
    for name, errors in data["errors"].items():
        for text, count in list(errors.items())[:5]:
            print(f"  failure {name}: {text} x{count}")
    return stats, [int(i) for i in data["created"]]


def print_stats(title: str, stats: Mapping[str, EndpointStats]) -> None:
    print(f"\n{title}")
    print(
        f"  {'endpoint':<58} {'requests':>8} {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6}"
    )
    for s in stats.values():
        print(
            f"  {s.name:<58} {s.requests:>8} {s.rps:>8.1f} {s.p50:>7.0f} {s.p95:>7.0f} {s.p99:>7.0f} "
            f"{s.failures:>6}"
        )


# --- CPU of the stack's processes ---------------------------------------------------------------------


def _label(cmdline: list[str]) -> str:
    joined = " ".join(cmdline)
    if "uvicorn" in joined:
        return "api"
    if "celery" in joined:
        for flag, role in (("-n", None), ("beat", "beat"), ("flower", "flower")):
            if flag in cmdline:
                if role is not None:
                    return role
                return cmdline[cmdline.index(flag) + 1].split("@")[0]
        return "celery"
    if "cancelflow.sandbox." in joined:
        return "sandbox-" + joined.split("cancelflow.sandbox.")[1].split()[0]
    if "locust" in joined:
        return "locust"
    if "multiprocessing" in joined:
        return "api"  # uvicorn's worker processes are spawned by multiprocessing
    return "cancelflow run"


def cpu_seconds(root: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of `root` and its descendants, by role."""
    import psutil

    totals: dict[str, float] = {}
    try:
        top = psutil.Process(root)
        procs = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return totals
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            label = _label(proc.cmdline())
            totals[label] = totals.get(label, 0.0) + times.user + times.system
    return totals


def sessions_opened(url: str) -> int:
    """Connections ever opened to this database (PostgreSQL 14+ counts them in pg_stat_database)."""
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_stat_clear_snapshot()")
            cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
            row = cur.fetchone()
            return int(row[0]) if row and row[0] is not None else -1
    finally:
        conn.close()


# --- after the load -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drain:
    total: int
    seconds_to_last: float | None  # None: not all were done within the timeout
    done_at_60s: int
    completed: int
    rejected: int
    failed: int


_DONE = """
SELECT count(*) FILTER (WHERE r.status = 'completed'),
       count(*) FILTER (WHERE r.status = 'rejected'),
       count(*) FILTER (WHERE r.status NOT IN ('completed', 'rejected') AND p.status = 'failed')
FROM cancellation_requests r LEFT JOIN cancellation_plans p ON p.request_id = r.id
WHERE r.id = ANY(%s)
"""


def drain(url: str, ids: list[int], *, stopped_at: float, timeout: float) -> Drain:
    """Poll until every request in `ids` is finished (completed, rejected, or its plan failed)."""
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    done_at_60 = -1
    try:
        while True:
            with conn.cursor() as cur:
                cur.execute(_DONE, (ids,))
                completed, rejected, failed = cur.fetchone() or (0, 0, 0)
            done = completed + rejected + failed
            elapsed = time.monotonic() - stopped_at
            if done_at_60 < 0 and elapsed >= 60:
                done_at_60 = done
            if done >= len(ids) or elapsed > timeout:
                last = elapsed if done >= len(ids) else None
                return Drain(
                    len(ids), last, done if done_at_60 < 0 else done_at_60, completed, rejected, failed
                )
            time.sleep(0.5)
    finally:
        conn.close()


# --- main ---------------------------------------------------------------------------------------------


def warm_up(api_url: str, token: str) -> None:
    """A few sequential requests so lazy imports and first connections are not measured."""
    import httpx

    with httpx.Client(base_url=api_url, timeout=30) as client:
        for _ in range(10):
            client.get("/healthz")
            client.get("/api/v1/cancellation_requests/?limit=1", headers={"Authorization": f"Token {token}"})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--duration", type=int, default=60, help="seconds of the burst")
    parser.add_argument("--baseline", type=int, default=20, help="seconds of the healthz baseline")
    parser.add_argument("--orders", type=int, default=6000, help="orders imported (about 4 units each)")
    parser.add_argument("--weights", default="8,1,1", help="create,list,read")
    parser.add_argument("--api-workers", type=int, default=None, help="CANCELFLOW_API_WORKERS of the stack")
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cf-load-") as tmp:
        workdir = Path(tmp)
        with bench_environment(workdir) as url, running_stack(workdir, api_workers=args.api_workers) as stack:
            started = time.monotonic()
            counts = import_orders(url, args.orders, stack.sandbox_port)
            units = cancellable_units(url)
            print(
                f"imported {counts.get('orders', args.orders)} orders in {time.monotonic() - started:.1f}s: "
                f"{len(units)} order item units to cancel"
            )
            token = str(stack.credentials()["storefront_token"])
            warm_up(stack.api_url, token)
            (workdir / "units.json").write_text(json.dumps(units))
            env = {
                "LOAD_TOKEN": token,
                "LOAD_UNITS": str(workdir / "units.json"),
                "LOAD_WEIGHTS": args.weights,
            }
            common = {"host": stack.api_url, "users": args.users, "workdir": workdir, "env": env}

            cpu_start = cpu_seconds(stack.proc.pid)
            baseline, _ = run_locust("HealthUser", seconds=args.baseline, **common)  # type: ignore[arg-type]
            cpu_before, wall_before = cpu_seconds(stack.proc.pid), time.monotonic()
            locust_cpu_before = _children_cpu()
            sessions_before = sessions_opened(url)
            burst, ids = run_locust("StorefrontUser", seconds=args.duration, **common)  # type: ignore[arg-type]
            stopped_at = time.monotonic()
            cpu_after = cpu_seconds(stack.proc.pid)
            locust_cpu = _children_cpu() - locust_cpu_before
            new_connections = sessions_opened(url) - sessions_before - 1  # less this probe's own
            wall = stopped_at - wall_before

            print(
                f"\n{args.users} users; api workers: {args.api_workers or 'default'}; {os.cpu_count()} cores"
            )
            print_stats(f"baseline: {args.baseline}s of GET /healthz only", baseline)
            print_stats(f"burst: {args.duration}s of create/list/read {args.weights}", burst)
            print(f"\nCPU during the burst (% of one core, {wall:.0f}s):")
            for label in sorted(cpu_after, key=lambda k: -(cpu_after[k] - cpu_before.get(k, 0.0))):
                used = cpu_after[label] - cpu_before.get(label, 0.0)
                print(f"  {label:<20} {100 * used / wall:6.1f}")
            print(f"  {'locust':<20} {100 * locust_cpu / wall:6.1f}")
            print(f"PostgreSQL connections opened during the burst: {new_connections}")
            # CPU the API spent per request: less sensitive than req/s to what else runs on the machine.
            api_base = cpu_before.get("api", 0.0) - cpu_start.get("api", 0.0)
            api_burst = cpu_after.get("api", 0.0) - cpu_before.get("api", 0.0)
            n_base = sum(s.requests for s in baseline.values())
            n_burst = sum(s.requests for s in burst.values())
            per_burst = 1000 * api_burst / n_burst if n_burst else None
            if n_base and n_burst:
                per_base, per_burst = 1000 * api_base / n_base, 1000 * api_burst / n_burst
                print(
                    f"API CPU per request: healthz {per_base:.2f} ms, burst mix {per_burst:.2f} ms "
                    f"(capacity ratio {per_base / per_burst:.2f})"
                )

            print(f"\nwaiting for the {len(ids)} created requests to finish their workflow…")
            drained = drain(url, ids, stopped_at=stopped_at, timeout=args.drain_timeout)

            create = burst.get(CREATE)
            health = baseline.get(HEALTHZ)
            errors = sum(s.failures for s in (*baseline.values(), *burst.values()))
            print("\nsummary")
            if create and health:
                print(
                    f"  creates/s {create.rps:.1f} / healthz/s {health.rps:.1f} = "
                    f"{create.rps / health.rps:.2f}  (target >= 0.25)"
                )
                print(f"  create p95 {create.p95:.0f} ms  (target < 150 ms at 50 users)")
                print_closed_loop(args.users, burst, per_burst)
            print(f"  errors {errors}  (target 0)")
            last = (
                f"{drained.seconds_to_last:.0f}s"
                if drained.seconds_to_last is not None
                else "not within timeout"
            )
            print(f"  last created request finished {last} after the load stopped  (target < 60 s)")
            share = drained.done_at_60s / drained.total if drained.total else 0.0
            print(
                f"  finished within 60 s of the stop: {drained.done_at_60s}/{drained.total} ({100 * share:.0f}%); "
                f"completed {drained.completed}, rejected {drained.rejected}, failed {drained.failed}"
            )
            if drained.seconds_to_last:
                print(
                    f"  worker end to end after the stop: {drained.total / max(1.0, drained.seconds_to_last + args.duration):.1f} requests/s over burst + drain"
                )


def print_closed_loop(users: int, burst: Mapping[str, EndpointStats], api_ms: float | None) -> None:
    """What a latency target means for a closed loop: `users` with no think time keep `users` requests in
    flight, so the mean response time is users / throughput (Little's law), whatever the server does. A
    mean below 150 ms (a p95 below it implies one) needs users / 0.15 s requests/s; at the API's CPU per
    burst request that is a number of cores, before PostgreSQL, the worker and locust take theirs."""
    rps = sum(s.rps for s in burst.values())
    if not rps:
        return
    needed = users / 0.150
    line = (
        f"  closed loop: {users} users / {rps:.1f} req/s = {1000 * users / rps:.0f} ms mean response time "
        f"(Little's law); a mean under 150 ms needs >= {needed:.0f} req/s"
    )
    if api_ms:
        line += f", {needed * api_ms / 1000:.1f} cores of API CPU alone at {api_ms:.2f} ms per request"
    print(line)


def _children_cpu() -> float:
    """CPU seconds used by this process's finished children (the locust runs)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
