"""Chaos: the database or the broker goes away mid-flow, under a steady create load over HTTP and messages.

The stack here runs on its own embedded PostgreSQL (pgserver) and its own Redis, so a phase may stop
them: a PostgreSQL fast shutdown, a SIGKILL of the postmaster, a Redis restart. Each phase is a separate
test and prints one summary line. While a server is away the API answers 503 with `Retry-After` (never a
500); the HTTP client retries as a storefront does, honouring it; the storefront's messages wait in the
broker or are retried by the worker. When the server is back, every process reconnects by itself and
the work in flight finishes promptly: the redelivery grace is the production default here (120 s), so a
step whose message was lost in the outage and left to the grace fails the phase's recovery bound.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from cancelflow.config.embedded import EmbeddedServices
from tests.chaos.conftest import RedisServer
from tests.chaos.test_chaos import (
    _last_status_events,
    _money_moved_events,
    _per_plan,
    _rows,
)
from tests.harness import Stack, wait_for
from tests.workflow.conftest import make_orders, make_service, submit

pytestmark = pytest.mark.worker

LOAD_SECONDS = 10.0  # requests start over this long; the fault begins after a third of it
OUTAGE_SECONDS = 4.0
# Work in flight when the server comes back finishes within this (the requirement; measured 3-4 s here),
# far below the 120 s grace a message lost in the outage would wait.
RECOVERY_BOUND = 10.0
# And every request accepted during the phase, including those created after the fault, within this.
SETTLE_BOUND = 45.0
ORDERS = 48  # at most this many requests per phase
HTTP_WORKERS = 2
PACE = 1.0  # seconds between two requests of one HTTP client: the load lasts through the fault
LIST = "/api/v1/cancellation_requests/"
PUBLISH_EVERY = 1.0
PRODUCTION_TIMERS = {"CANCELFLOW_REDELIVERY_GRACE": "120", "CANCELFLOW_SWEEP_INTERVAL": "10"}


@pytest.fixture(scope="module")
def chaos_pg(chaos_redis: RedisServer) -> Iterator[EmbeddedServices]:
    from cancelflow.config import get_settings
    from cancelflow.db import _session_factory, get_engine, migrate

    workdir = chaos_redis.proc.log_path.parent.parent
    services = EmbeddedServices(workdir / "embedded", redis=False, database="cancelflow_chaos")
    database_url, _ = services.start()
    migrate(database_url)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"CANCELFLOW_DATABASE_URL": database_url, **PRODUCTION_TIMERS}.items():
            patch.setenv(name, value)
        for cache in (get_settings, get_engine, _session_factory):
            cache.cache_clear()
        try:
            yield services
        finally:
            get_engine().dispose()
            for cache in (get_settings, get_engine, _session_factory):
                cache.cache_clear()
    services.stop()


@pytest.fixture(scope="module")
def db_stack(chaos_pg: EmbeddedServices, chaos_redis: RedisServer) -> Iterator[Stack]:
    from celery import Celery

    from cancelflow.config import get_settings
    from cancelflow.worker.config import celery_config

    assert chaos_pg.database_url is not None
    app = Celery("cancelflow-chaos-db", set_as_current=False)
    app.conf.update(celery_config(get_settings().model_copy(update={"broker_url": chaos_redis.url})))
    workdir = chaos_redis.proc.log_path.parent.parent
    env = {"CANCELFLOW_BROKER_URL": chaos_redis.url, **PRODUCTION_TIMERS}
    running = Stack(workdir, env_overrides=env, concurrency=4).start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("cancelflow.worker.app.celery_app", app)
        try:
            yield running
        finally:
            running.stop()
            app.close()


@dataclass
class Load:
    """A steady stream of creates: HTTP POSTs (Idempotency-Key, retried on 503) and submit messages."""

    stack: Stack
    token_id: int
    key: str
    orders: list[int]
    http_cids: list[str] = field(default_factory=list)
    message_cids: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    unavailable_at: list[float] = field(default_factory=list)
    missing_retry_after: int = 0
    failures: list[str] = field(default_factory=list)
    accepted_at: dict[str, float] = field(default_factory=dict)
    answered_at: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _next_item(self) -> int | None:
        with self.lock:
            return self.orders.pop() if self.orders else None

    def _post(self, client: httpx.Client, item: int, until: float) -> None:
        key = uuid.uuid4().hex
        started = time.monotonic()
        while time.monotonic() < until:
            try:
                response = client.post(
                    LIST,
                    json={"order_item": item, "reason": 1, "quantity": 1},
                    headers={"Authorization": f"Token {self.key}", "Idempotency-Key": key},
                )
            except httpx.TransportError as exc:  # the API itself must stay up
                with self.lock:
                    self.failures.append(f"transport error: {exc!r}")
                time.sleep(1)
                continue
            with self.lock:
                self.statuses[response.status_code] += 1
                self.answered_at.append(time.monotonic())
            if response.status_code == 201:
                with self.lock:
                    self.latencies.append(time.monotonic() - started)
                    self.http_cids.append(f"http:{self.token_id}:{key}")
                    self.accepted_at[self.http_cids[-1]] = time.monotonic()
                return
            if response.status_code == 503:
                with self.lock:
                    self.unavailable_at.append(time.monotonic())
                    self.missing_retry_after += "Retry-After" not in response.headers
                time.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            with self.lock:
                self.failures.append(f"{response.status_code}: {response.text[:300]}")
            return
        with self.lock:
            self.failures.append(f"POST for item {item} not accepted before the deadline")

    def http(self, until_started: float, deadline: float) -> None:
        with httpx.Client(base_url=self.stack.api_url, timeout=60) as client:
            while time.monotonic() < until_started and (item := self._next_item()) is not None:
                self._post(client, item, deadline)
                time.sleep(PACE)

    def messages(self, until_started: float) -> None:
        while time.monotonic() < until_started and (item := self._next_item()) is not None:
            cid = f"msg-{secrets.token_hex(8)}"
            submit(client_request_id=cid, order_item=item, quantity=1)
            with self.lock:
                self.message_cids.append(cid)
                self.accepted_at[cid] = time.monotonic()
            time.sleep(PUBLISH_EVERY)


def _staff_token() -> tuple[int, str]:
    from cancelflow.db import transaction
    from cancelflow.services import tokens

    with transaction() as session:
        token, key = tokens.create_token(session, name=f"chaos-db-{secrets.token_hex(4)}", kind="staff")
        return token.id, key


def _completed(cids: list[str]) -> int:
    return sum(
        request.status.value == "completed" and plan is not None and plan.status.value == "completed"
        for request, plan in _rows(cids).values()
    )


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else 0.0


def _run_phase(
    name: str,
    stack: Stack,
    *,
    fault: Callable[[], None] | None,
    recover: Callable[[], None] | None,
    messages: bool = True,
    baseline: float | None = None,
    capsys: pytest.CaptureFixture[str] | None,
) -> float:
    """One fault under load; every process of the stack must live through it (none is restarted).

    With no fault, the same load alone: its p95 is the `baseline` a fault's summary is set against.
    Returns the phase's p95 request latency."""
    service = make_service(stack, policy="accept")
    orders = [
        order["items"][0]["id"]
        for order in make_orders([(service, {"quantity": 1, "unit_price": "12.34"})] * ORDERS)
    ]
    token_id, key = _staff_token()
    load = Load(stack, token_id, key, orders)
    with httpx.Client(base_url=stack.api_url, timeout=60) as warm:  # the API's first request is slow
        assert warm.get(LIST, headers={"Authorization": f"Token {key}"}).status_code == 200
    start = time.monotonic()
    until = start + LOAD_SECONDS
    deadline = until + 120
    threads = [
        threading.Thread(target=load.http, args=(until, deadline), daemon=True) for _ in range(HTTP_WORKERS)
    ]
    if messages:
        threads.append(threading.Thread(target=load.messages, args=(until,), daemon=True))
    for thread in threads:
        thread.start()
    try:
        time.sleep(LOAD_SECONDS / 3)
        faulted = time.monotonic()
        if fault is not None:
            fault()
        time.sleep(OUTAGE_SECONDS)
        if recover is not None:
            recover()
        back = time.monotonic()
        with load.lock:
            in_flight = [cid for cid, at in load.accepted_at.items() if at < back]
        # The requests accepted before the server came back finish promptly, not after the grace.
        wait_for(
            lambda: _completed(in_flight) == len(in_flight),
            timeout=RECOVERY_BOUND,
            interval=0.5,
            what=f"{name}: the {len(in_flight)} requests in flight at recovery completed",
        )
        caught_up = time.monotonic() - back
        for thread in threads:
            thread.join(timeout=max(1.0, deadline - time.monotonic()))
        accepted = load.http_cids + load.message_cids
        wait_for(
            lambda: _completed(accepted) == len(accepted),
            timeout=SETTLE_BOUND + max(0.0, until - time.monotonic()),
            interval=0.5,
            what=f"{name}: the {len(accepted)} accepted requests completed",
        )
        settled = time.monotonic() - back
    except BaseException:
        print(stack.logs())
        raise

    # Nothing lost, nothing half-written, money moved once per plan, and the event log agrees.
    rows = _rows(accepted)
    lost = [cid for cid in accepted if cid not in rows]
    plan_ids = [plan.id for _, plan in rows.values() if plan is not None]
    ours = {str(plan_id) for plan_id in plan_ids}
    per_key: Counter[str] = Counter()
    for kind in ("/refunds", "/transfers"):
        for movement in stack.gateway(kind)["data"]:
            if movement["idempotency_key"].split(":", 1)[0] in ours:
                per_key[movement["idempotency_key"]] += 1
    recorded = _per_plan_counts(plan_ids)
    events = _money_moved_events(plan_ids)
    duplicates = sum(n - 1 for n in per_key.values() if n > 1)
    duplicates += sum(max(0, n - 1) for n in recorded.values()) + sum(max(0, n - 1) for n in events.values())
    unpaid = [pid for pid in plan_ids if recorded.get(pid, 0) != 1 or events[pid] != 1]
    fives = sum(n for status, n in load.statuses.items() if status >= 500 and status != 503)
    window = max(load.unavailable_at) - min(load.unavailable_at) if load.unavailable_at else 0.0
    requests = {request.id: request.status.value for request, _ in rows.values()}
    plans = {plan.id: plan.status.value for _, plan in rows.values() if plan is not None}

    p95 = _p95(load.latencies)
    against = f" (without the fault {baseline:.2f}s)" if baseline is not None else ""
    summary = (
        f"chaos {name}: accepted {len(accepted)} ({len(load.http_cids)} HTTP, {len(load.message_cids)} "
        f"messages), completed {_completed(accepted)}, lost {len(lost)}, duplicate money movements "
        f"{duplicates}, 5xx answers {fives}, 503 answers {load.statuses[503]}, error window {window:.1f}s, "
        f"p95 request latency {p95:.2f}s{against}, {len(in_flight)} in flight at recovery "
        f"finished {caught_up:.1f}s after it, all settled {settled:.1f}s after it, "
        f"processes exited {[name for name, process in stack.procs.items() if not process.alive()]}"
    )
    from tests.conftest import OUTPUT_DIR

    with (OUTPUT_DIR / "chaos-faults.txt").open("a") as out:
        out.write(summary + "\n")
    if capsys is not None:
        with capsys.disabled():
            print(f"\n{summary}")
    assert load.failures == [], load.failures[:10]
    # The load went on through the fault: the API answered while the server was away.
    assert any(faulted <= at <= back for at in load.answered_at), "no request met the fault"
    assert lost == []
    assert fives == 0, load.statuses
    assert load.missing_retry_after == 0
    assert duplicates == 0, per_key
    assert unpaid == []
    assert len(plan_ids) == len(accepted)
    assert _last_status_events("request", list(requests)) == requests
    assert _last_status_events("plan", list(plans)) == plans
    assert all(process.alive() for process in stack.procs.values()), "a process died; none may restart"
    return p95


def baseline_p95(stack: Stack, *, messages: bool = True) -> float:
    """The p95 request latency of the phases' load on `stack` with no fault."""
    return _run_phase("without a fault", stack, fault=None, recover=None, messages=messages, capsys=None)


@pytest.fixture(scope="module")
def db_baseline(db_stack: Stack) -> float:
    return baseline_p95(db_stack)


def _per_plan_counts(plan_ids: list[int]) -> dict[int, int]:
    from cancelflow.models import MoneyTransaction

    return {plan_id: n for plan_id, (n, _) in _per_plan(MoneyTransaction, plan_ids).items()}


def _pg_ctl_stop_fast(services: EmbeddedServices) -> None:
    from pgserver._commands import pg_ctl

    # As the server's own user (pgserver runs it as `pgserver` when the tests run as root).
    user = services._pg_server.system_user
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=services.postgres_dir, user=user)


def _kill_postmaster(services: EmbeddedServices) -> None:
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(services.postgres_dir)
    assert info is not None
    assert info.pid is not None
    os.kill(info.pid, signal.SIGKILL)


def _revive_postgres(services: EmbeddedServices) -> None:
    # After a SIGKILL the orphaned backends hold the shared memory a moment: revive() retries.
    wait_for(
        lambda: bool(services.revive()) and _pg_up(services), timeout=60, interval=0.5, what="PostgreSQL"
    )


def _pg_up(services: EmbeddedServices) -> bool:
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(services.postgres_dir)
    return info is not None and info.is_running() and info.status == "ready"


def test_postgres_fast_restart(
    db_stack: Stack, chaos_pg: EmbeddedServices, db_baseline: float, capsys: pytest.CaptureFixture[str]
) -> None:
    _run_phase(
        "PostgreSQL restart (fast shutdown)",
        db_stack,
        fault=lambda: _pg_ctl_stop_fast(chaos_pg),
        recover=lambda: _revive_postgres(chaos_pg),
        baseline=db_baseline,
        capsys=capsys,
    )


def test_postgres_sigkill(
    db_stack: Stack, chaos_pg: EmbeddedServices, db_baseline: float, capsys: pytest.CaptureFixture[str]
) -> None:
    _run_phase(
        "PostgreSQL SIGKILL + restart",
        db_stack,
        fault=lambda: _kill_postmaster(chaos_pg),
        recover=lambda: _revive_postgres(chaos_pg),
        baseline=db_baseline,
        capsys=capsys,
    )
