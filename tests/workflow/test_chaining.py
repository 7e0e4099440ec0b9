"""Steps continued in-process (`worker.chain`): a worker killed between two chained steps loses nothing and
pays once; a chain stops at its bound and publishes the rest; a successor on another pool's queue crosses
the broker. Real worker processes, real PostgreSQL and broker."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import psycopg2
import pytest
from sqlalchemy import select

from cancelflow.models import Event, MoneyTransaction, WorkflowStep
from cancelflow.models.enums import StepKind
from tests.conftest import DATABASE_URL
from tests.harness import Proc, Stack, clean_workdir, running, wait_for
from tests.workflow.conftest import (
    count,
    make_order,
    make_service,
    plan_for,
    submit,
    wait_plan,
    wait_status,
)

pytestmark = pytest.mark.worker

ALL_BUT_ROUTE = "default,money,bulk,intake,webhooks,sweep"


@pytest.fixture(scope="module")
def stack(database: str) -> Iterator[Stack]:
    """A stack whose sweeper re-sends nothing within a test (a long redelivery grace): every hop a test sees
    cross the broker is one the chain published, and a step after a kill is resumed by the chain."""
    env = {"CANCELFLOW_REDELIVERY_GRACE": "120"}
    with running(Stack(clean_workdir("stack-test_chaining"), env_overrides=env)) as stack:
        yield stack


def _log_lines(proc: Proc, since: int) -> list[dict[str, Any]]:
    lines = []
    for raw in proc.log_text()[since:].splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue  # a line Celery printed before logging was set up
        if isinstance(line, dict):
            lines.append(line)
    return lines


def _steps_done(proc: Proc, since: int, request_id: int) -> list[dict[str, Any]]:
    """The worker's "step done" lines for the request's steps, in the order they ran."""
    return [
        line
        for line in _log_lines(proc, since)
        if line.get("event") == "step done" and line.get("request_id") == request_id
    ]


def _received(proc: Proc, since: int, task: str) -> list[list[Any]]:
    """The arguments of every `task` message the worker received (each hop that crossed the broker)."""
    return [
        json.loads(line["data"]["args"])
        for line in _log_lines(proc, since)
        if str(line.get("event", "")).endswith("received") and line.get("data", {}).get("name") == task
    ]


def _step_ids(request_id: int) -> dict[StepKind, int]:
    from cancelflow.db import transaction

    with transaction() as session:
        rows = session.execute(
            select(WorkflowStep.kind, WorkflowStep.id).where(WorkflowStep.request_id == request_id)
        ).all()
    return {row.kind: row.id for row in rows}


@contextmanager
def worker_with(stack: Stack, *, queues: str | None = None, **env: str) -> Iterator[tuple[Proc, int]]:
    """The stack's worker restarted with other settings (or queues) for the block; with where its log starts.

    Stopped after the block: the next test that needs the stack's own worker starts it again (`worker`), and
    one that brings its own does not wait for a worker it would stop at once."""
    saved = dict(stack.env)
    stack.procs["worker"].stop()
    since = len(stack.procs["worker"].log_text())
    stack.env.update(env)
    try:
        yield stack.start_worker(queues=queues), since
    finally:
        stack.procs["worker"].stop()
        stack.env.clear()
        stack.env.update(saved)


@pytest.fixture
def worker(stack: Stack) -> Proc:
    """The stack's own worker, started again when a test before stopped it."""
    if not stack.procs["worker"].alive():
        stack.start_worker()
    return stack.procs["worker"]


def _blocked_by(pid: int, *, terminate: bool = False) -> list[int]:
    """The database sessions waiting for a lock that session `pid` holds; `terminate` ends them."""
    conn = psycopg2.connect(DATABASE_URL)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (pid,))
            pids = [int(row[0]) for row in cur.fetchall()]
            for blocked in pids if terminate else ():
                cur.execute("SELECT pg_terminate_backend(%s)", (blocked,))
            return pids
    finally:
        conn.close()


def test_a_worker_killed_between_two_chained_steps_resumes_and_pays_once(stack: Stack, worker: Proc) -> None:
    # Given a refund that takes its time at the gateway, so the test can hold the order row meanwhile
    service = make_service(stack, policy="accept")
    since = len(worker.log_text())
    stack.gateway("/_admin/config", json={"delay_seconds": 3})
    holder = psycopg2.connect(DATABASE_URL)
    parent = psutil.Process(worker.popen.pid)  # type: ignore[union-attr]
    try:
        order = make_order(service, unit_price="55.50", quantity=1)
        cid = submit(order_item=order["items"][0]["id"])
        request = wait_status(cid, "approved")
        plan = wait_plan(request.id, "waiting_for_payment", "completed")
        key = f"{plan.id}:original_payment:1"
        wait_for(lambda: stack.gateway("/_admin/calls").get(key, 0) >= 1, timeout=30, what="refund in flight")
        # While the refund is at the gateway, hold the order row: the close step, which the refund's task
        # runs in-process once the refund has committed, starts by locking it and waits there
        with holder.cursor() as cur:
            cur.execute("SELECT id FROM orders WHERE id = %s FOR UPDATE", (order["id"],))
        refund_id = _step_ids(request.id)[StepKind.refund]
        wait_for(lambda: _done(refund_id), timeout=30, what="refund committed")
        wait_for(lambda: _blocked_by(holder.get_backend_pid()), timeout=30, what="chained close step waiting")
        close_id = _step_ids(request.id)[StepKind.close]
        assert not _done(close_id)
        assert _received(worker, since, "cancellations.close") == []  # taken to run here, not published
        # When every worker child is SIGKILLed between the committed refund and the close it went on to
        # (the parent held still meanwhile, so that it redelivers the refund's message only once the killed
        # child's database session, stuck behind the test's lock, is gone too)
        parent.suspend()
        children = worker.children()
        for child in children:
            child.send_signal(signal.SIGKILL)
        assert children
        psutil.wait_procs(children, timeout=10)
        _blocked_by(holder.get_backend_pid(), terminate=True)
        wait_for(lambda: not _blocked_by(holder.get_backend_pid()), timeout=10, what="killed session gone")
    finally:
        holder.rollback()
        holder.close()
        if parent.status() == psutil.STATUS_STOPPED:
            parent.resume()
        stack.gateway("/_admin/config", json={"delay_seconds": 0})
    # Then the redelivered refund message finds its step done and goes on with the close step: the request
    # completes, the close ran once, and the money moved once
    wait_status(cid, "completed", timeout=90)
    refunds = [r for r in stack.gateway("/refunds")["data"] if r["idempotency_key"] == key]
    assert len(refunds) == 1
    assert stack.gateway("/_admin/calls")[key] == 1  # the refund was not run again
    assert count(MoneyTransaction, MoneyTransaction.plan_id == plan.id) == 1
    assert count(WorkflowStep, WorkflowStep.plan_id == plan.id, WorkflowStep.kind == StepKind.close) == 1
    completed = count(
        Event, Event.entity == "request", Event.entity_id == request.id, Event.kind == "request.completed"
    )
    assert completed == 1
    done = _steps_done(worker, since, request.id)
    refund_runs = [line for line in done if line["task"] == "payments.refund"]
    close_runs = [line for line in done if line["task"] == "cancellations.close"]
    assert len(refund_runs) == 1
    assert [(line["step_id"], line["chained"], line["task_id"]) for line in close_runs] == [
        (close_id, True, refund_runs[0]["task_id"])  # resumed by the refund's redelivered message
    ]
    assert _received(worker, since, "cancellations.close") == []
    assert worker.alive()


def _done(step_id: int) -> bool:
    from cancelflow.db import transaction

    with transaction() as session:
        step = session.get(WorkflowStep, step_id)
        return step is not None and step.status.value == "done"


@pytest.mark.parametrize("max_steps", [1, 0])
def test_a_chain_stops_at_its_bound_and_publishes_the_rest(stack: Stack, max_steps: int) -> None:
    service = make_service(stack, policy="accept")
    with worker_with(stack, CANCELFLOW_CHAIN_MAX_STEPS=str(max_steps)) as (worker, since):
        order = make_order(service, quantity=1)
        cid = submit(order_item=order["items"][0]["id"])
        request = wait_status(cid, "completed")
        ids = _step_ids(request.id)
        done = _steps_done(worker, since, request.id)
        # Every step is in the log once, and no task execution ran more successors than the bound
        assert sorted(line["step_id"] for line in done) == sorted(ids.values())
        per_execution: dict[str, int] = {}
        for line in done:
            per_execution[line["task_id"]] = per_execution.get(line["task_id"], 0) + line["chained"]
        assert max(per_execution.values()) == max_steps
        chained = {line["task"] for line in done if line["chained"]}
        received = {
            task: _received(worker, since, task)
            for task in (
                "cancellations.validate",
                "cancellations.route",
                "fulfillment.notify",
                "cancellations.close",
            )
        }
    if max_steps == 1:
        # submit ran validate; route, past the bound, crossed the broker and ran notify; the refund ran close
        assert chained == {"cancellations.validate", "fulfillment.notify", "cancellations.close"}
        assert received["cancellations.route"] == [[ids[StepKind.route]]]
        assert received["cancellations.validate"] == received["fulfillment.notify"] == []
    else:
        assert chained == set()  # chaining off: every step crossed the broker, as before
        assert received["cancellations.validate"] == [[ids[StepKind.validate]]]
        assert received["cancellations.route"] == [[ids[StepKind.route]]]
        assert received["fulfillment.notify"] == [[ids[StepKind.notify]]]
        assert received["cancellations.close"] == [[ids[StepKind.close]]]


def test_a_successor_on_a_queue_the_worker_does_not_consume_is_published(stack: Stack) -> None:
    service = make_service(stack, policy="accept")
    with worker_with(stack, queues=ALL_BUT_ROUTE) as (worker, since):
        order = make_order(service, quantity=1)
        cid = submit(order_item=order["items"][0]["id"])
        request = wait_status(cid, "approved")
        # The submit task ran validation in-process and ended without running the route step
        wait_for(
            lambda: any(
                str(line.get("event", "")).startswith("Task cancellations.submit[")
                and "succeeded" in str(line.get("event"))
                for line in _log_lines(worker, since)
            ),
            timeout=30,
            what="submit finished",
        )
        ids = _step_ids(request.id)
        assert _done(ids[StepKind.validate])
        assert not _done(ids[StepKind.route])
        assert [line["chained"] for line in _steps_done(worker, since, request.id)] == [True]
        # When a worker of the route pool comes, it gets the route step's message and goes on from there
        router = stack.start_worker("worker-route", queues="route")
        try:
            router_since = 0
            wait_status(cid, "completed", timeout=60)
            assert _received(router, router_since, "cancellations.route")[0] == [ids[StepKind.route]]
            routed = {line["task"]: line["chained"] for line in _steps_done(router, router_since, request.id)}
            assert routed == {"cancellations.route": False, "fulfillment.notify": True}
            # the refund (published by the API on the service's accept) ran close in-process on this worker
            settled = {line["task"]: line["chained"] for line in _steps_done(worker, since, request.id)}
            assert settled == {
                "cancellations.validate": True,
                "payments.refund": False,
                "cancellations.close": True,
            }
        finally:
            router.stop()
    assert count(MoneyTransaction, MoneyTransaction.plan_id == plan_for(request.id).id) == 1
