"""Chaos: 200 requests with mixed fulfillment policies while workers die, restart and the broker loses
everything, twice; then every request must be where its policy says and every refund moved exactly once.

What is done to the stack, in order, while requests flow:
* worker children SIGKILLed at random moments from a background thread (seeded), at least MIN_KILLS times;
* a flaky payment gateway (random 503s) for the whole run;
* one broker flush (every queued and unacked message gone), one soft restart of the worker (SIGTERM), one
  Redis restart (SIGTERM, comes back empty), each while steps are in flight;
* duplicate messages: `cancellations.submit` re-published with the same client_request_id, and step tasks
  re-sent by name with the ids of steps found in the database;
* forged messages: every task name published with ids of steps of kinds it does not run (money steps among
  them), ids of no row and values that are no id; each must be refused and change nothing.

A submit message the broker drops before the worker has read it never reached cancelflow: the storefront
re-publishes it (idempotent on client_request_id). So each broker loss happens once the requests published
so far are stored; what it destroys is then work PostgreSQL owns, which the sweeper must recover.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psutil
import pytest
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import distinct_on

from cancelflow.models import (
    CancellationPlan,
    CancellationRequest,
    Event,
    LoyaltyLedgerEntry,
    MoneyTransaction,
    WorkflowStep,
)
from cancelflow.models.enums import StepKind, StepStatus
from cancelflow.services.steps import TASK_FOR_KIND
from cancelflow.worker.app import celery_app as session_app  # bound before chaos_stack swaps it
from tests.chaos.conftest import RedisServer
from tests.factories import VALID_IBAN
from tests.harness import Stack, wait_for
from tests.workflow.conftest import amount, make_orders, make_service, submit

pytestmark = pytest.mark.worker

SEED = int(os.environ.get("CANCELFLOW_CHAOS_SEED", "20240505"))
N = 200
MIX = {"accept": 80, "late": 40, "reject": 40, "never": 40}
TARGETS = ("original_payment", "bank_transfer", "loyalty_money")
# (request status, plan status) each policy must end in.
EXPECTED = {
    "accept": ("completed", "completed"),
    "late": ("completed", "completed"),
    "reject": ("rejected", "rejected"),
    "never": ("approved", "confirmation_waiting"),
}
MIN_KILLS = 10
# A cap, because a kill every second for minutes measures fork speed, not recovery: respawning children
# and re-running their aborted steps at the back of the queue starve a 2-core machine.
MAX_KILLS = 15
GATEWAY_FAIL_RATE = 0.2
# Seconds for everything after the stack is up; pytest-timeout (300 s, set-up included) is the backstop.
BUDGET = 210.0
QUEUES = ("default", "route", "money", "bulk", "intake", "webhooks", "sweep")
# A warm shutdown that follows a child's SIGKILL closely can take 30 s and more: each pool process that
# finished a task waits up to 30 s (billiard's `_ensure_messages_consumed`, 300 x 0.1 s) for the parent, whose
# event loop has stopped, to read its result. Seen once at 34 s in a loaded run; a longer wait is a hang.
WARM_SHUTDOWN_TIMEOUT = 60
MONEY_KINDS = (StepKind.refund, StepKind.bank_transfer, StepKind.loyalty_credit)


@dataclass(frozen=True)
class Planned:
    cid: str
    policy: str
    target: str
    amount: Decimal
    message: dict[str, Any]


@dataclass
class Tally:
    kills: int = 0
    soft_restarts: int = 0
    flushes: int = 0
    redis_restarts: int = 0
    duplicates: int = 0
    forged: int = 0
    lost_messages: list[int] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)


class Clock:
    """One deadline for the whole run, so no wait can take more than what is left of it."""

    def __init__(self, budget: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + budget
        self.marks: list[tuple[str, float]] = []

    def mark(self, phase: str) -> None:
        """Note when a phase ended: printed with the figures, never asserted (wall-clock varies)."""
        self.marks.append((phase, time.monotonic() - self.started))

    def phases(self) -> str:
        return ", ".join(f"{phase} {at:.0f}s" for phase, at in self.marks)

    def left(self, cap: float) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("chaos run exceeded its time budget")
        return min(cap, left)


class Killer(threading.Thread):
    """SIGKILLs one worker child at a random moment, again and again, up to MAX_KILLS or until stopped."""

    def __init__(self, stack: Stack, rng: random.Random, lock: threading.Lock, tally: Tally) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.stack, self.rng, self.lock, self.tally = stack, rng, lock, tally
        self.halt = threading.Event()

    def run(self) -> None:
        while self.tally.kills < MAX_KILLS and not self.halt.wait(self.rng.uniform(0.3, 2.0)):
            with self.lock:  # never while the worker itself is being restarted
                children = sorted(self.stack.procs["worker"].children(), key=lambda p: p.pid)
                if not children:
                    continue
                victim = self.rng.choice(children)
                try:
                    victim.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    continue  # it was already being replaced: not a kill
                self.tally.kills += 1

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)


class Supervisor(threading.Thread):
    """Restarts a worker or beat that exited on its own, as the deployment's process manager does
    (docker-compose: `restart: unless-stopped`). Every restart is counted and printed, never hidden."""

    def __init__(self, stack: Stack, lock: threading.Lock, tally: Tally) -> None:
        super().__init__(name="chaos-supervisor", daemon=True)
        self.stack, self.lock, self.tally = stack, lock, tally
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.halt.wait(0.5):
                with self.lock:  # not while the test itself restarts the worker
                    for name in ("worker", "beat"):
                        self._revive(name)
        except BaseException as exc:  # handed to the test thread, which fails with it
            self.error = exc

    def _revive(self, name: str) -> None:
        proc = self.stack.procs[name]
        if proc.popen is None or proc.alive():
            return
        returncode = proc.popen.returncode
        fatal = [line for line in proc.log_text().splitlines() if "Unrecoverable error" in line]
        self.tally.crashes.append(f"{name} exited with {returncode}: {fatal[-1][:300] if fatal else '?'}")
        proc.stop()
        if name == "worker":
            self.stack.start_worker()
        else:
            proc.start()

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=90)
        if self.error is not None:
            raise AssertionError(f"the supervisor could not restart a process: {self.error!r}")


def _unit_price(rng: random.Random) -> str:
    cents = rng.randint(100, 50_000)
    return f"{cents // 100}.{cents % 100:02d}"


def _make_requests(stack: Stack, rng: random.Random) -> list[Planned]:
    services = {
        "accept": make_service(stack, policy="accept"),
        "late": make_service(stack, policy="accept_after", delay_seconds=2),
        "reject": make_service(stack, policy="reject", message="Already packed"),
        # An hour to answer: the plan must still be waiting, deadline far ahead, when the run ends.
        "never": make_service(stack, policy="never", deadline_seconds=3600),
    }
    policies = [policy for policy, n in MIX.items() for _ in range(n)]
    rng.shuffle(policies)
    drawn = []
    for n, policy in enumerate(policies):
        target = rng.choice(TARGETS)
        ordered = rng.randint(1, 3)
        quantity = rng.randint(1, ordered)  # less than ordered splits the fulfillment order first
        unit_price = _unit_price(rng)
        method = "cash_on_delivery" if target == "bank_transfer" else "card"
        order = (services[policy], {"quantity": ordered, "unit_price": unit_price, "method": method})
        drawn.append(
            (f"chaos-{SEED}-{n}-{rng.getrandbits(32):08x}", policy, target, quantity, unit_price, order)
        )
    orders = make_orders([order for *_, order in drawn])  # one import: 200 of them cost seconds
    planned = []
    for (cid, policy, target, quantity, unit_price, _), order in zip(drawn, orders, strict=True):
        message: dict[str, Any] = {
            "client_request_id": cid,
            "order_item": order["items"][0]["id"],
            "quantity": quantity,
        }
        if target == "bank_transfer":
            message.update(iban=VALID_IBAN, holder_name="Bob Norman")
        elif target == "loyalty_money":
            message["fully_refund_as_loyalty_money"] = True
        planned.append(Planned(cid, policy, target, amount(unit_price, quantity), message))
    return planned


# --- database views ------------------------------------------------------------------------------------


def _rows(cids: list[str]) -> dict[str, Any]:
    """client_request_id -> (request, plan or None), in one query."""
    from cancelflow.db import transaction

    with transaction() as session:
        result = session.execute(
            select(CancellationRequest, CancellationPlan)
            .outerjoin(CancellationPlan, CancellationPlan.request_id == CancellationRequest.id)
            .where(CancellationRequest.client_request_id.in_(cids))
        ).all()
    return {request.client_request_id: (request, plan) for request, plan in result}


def _stored(planned: list[Planned]) -> bool:
    return len(_rows([p.cid for p in planned])) == len(planned)


def _planned(wave: list[Planned]) -> int:
    return sum(plan is not None for _, plan in _rows([p.cid for p in wave]).values())


def _pending_money_steps(request_ids: list[int]) -> int:
    from cancelflow.db import transaction

    with transaction() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(WorkflowStep)
                .where(
                    WorkflowStep.request_id.in_(request_ids),
                    WorkflowStep.kind.in_([*MONEY_KINDS, StepKind.close]),
                    WorkflowStep.status == StepStatus.pending,
                )
            )
            or 0
        )


def _off_course(planned: list[Planned]) -> list[str]:
    """Requests not (yet) where their policy says they end, described for a failure message."""
    rows = _rows([p.cid for p in planned])
    wrong = []
    for p in planned:
        request, plan = rows.get(p.cid, (None, None))
        got = (request.status.value if request else None, plan.status.value if plan else None)
        if got != EXPECTED[p.policy]:
            wrong.append(f"{p.cid} ({p.policy}, {p.target}): {got}, expected {EXPECTED[p.policy]}")
    return wrong


def _settled(planned: list[Planned]) -> bool:
    if _off_course(planned):
        return False
    # No money (or close) step still due, so nothing can move money after the figures are taken.
    ids = [request.id for request, _ in _rows([p.cid for p in planned]).values()]
    return _pending_money_steps(ids) == 0


def _last_status_events(entity: str, ids: list[int]) -> dict[int, str | None]:
    """The to_status of the newest `<entity>.*` event carrying a status, per entity id."""
    from cancelflow.db import transaction

    with transaction() as session:
        result = session.execute(
            select(Event.entity_id, Event.to_status)
            .where(
                Event.entity == entity,
                Event.entity_id.in_(ids),
                Event.kind.like(f"{entity}.%"),
                Event.to_status.is_not(None),
            )
            .order_by(Event.entity_id, Event.id.desc())
            .ext(distinct_on(Event.entity_id))
        ).all()
    return {int(row[0]): row[1] for row in result}


def _per_plan(model: Any, plan_ids: list[int]) -> dict[int, tuple[int, Decimal]]:
    from cancelflow.db import transaction

    with transaction() as session:
        result = session.execute(
            select(model.plan_id, func.count(), func.sum(model.amount))
            .where(model.plan_id.in_(plan_ids))
            .group_by(model.plan_id)
        ).all()
    return {plan_id: (int(n), Decimal(total)) for plan_id, n, total in result}


def _money_moved_events(plan_ids: list[int]) -> Counter[int]:
    from cancelflow.db import transaction

    with transaction() as session:
        result = session.execute(
            select(Event.entity_id, func.count())
            .where(Event.entity == "plan", Event.entity_id.in_(plan_ids), Event.kind == "money.moved")
            .group_by(Event.entity_id)
        ).all()
    return Counter({entity_id: int(n) for entity_id, n in result})


# --- the faults ----------------------------------------------------------------------------------------


def _queued(broker: RedisServer) -> int:
    client = broker.client()
    return sum(int(client.llen(q)) for q in QUEUES) + int(client.hlen("unacked"))


def _duplicate(planned: list[Planned], rng: random.Random, *, submits: int, steps: int) -> int:
    """Re-publish some submits and re-send some step tasks by id; returns how many messages went out."""
    from cancelflow.db import transaction
    from cancelflow.worker.app import celery_app  # the chaos broker's app (see chaos_stack)

    sent = 0
    for p in rng.sample(planned, submits):
        submit(**p.message)
        sent += 1
    ids = [request.id for request, _ in _rows([p.cid for p in planned]).values()]
    with transaction() as session:
        found = session.execute(
            select(WorkflowStep.id, WorkflowStep.kind)
            .where(WorkflowStep.request_id.in_(ids))
            .order_by(WorkflowStep.id)
        ).all()
    money = [row for row in found if row.kind in MONEY_KINDS]
    others = [row for row in found if row.kind not in MONEY_KINDS]
    # Money steps twice each: those are the duplicates that would cost real money if one got through.
    chosen = rng.sample(money, min(len(money), steps // 2)) * 2
    chosen += rng.sample(others, min(len(others), steps - len(chosen)))
    for row in chosen:
        celery_app.send_task(TASK_FOR_KIND[row.kind], args=[row.id])
        sent += 1
    return sent


def _forge(planned: list[Planned], rng: random.Random, *, per_task: int) -> int:
    """Publish every task name with ids it must refuse; returns how many messages went out."""
    from cancelflow.db import transaction
    from cancelflow.worker.app import celery_app  # the chaos broker's app (see chaos_stack)

    # The task names come from the session's app, which registers the task modules (the chaos app does not).
    session_app.loader.import_default_modules()
    names = sorted(n for n in session_app.tasks if not n.startswith("celery."))
    ids = [request.id for request, _ in _rows([p.cid for p in planned]).values()]
    with transaction() as session:
        found = session.execute(
            select(WorkflowStep.id, WorkflowStep.kind).where(WorkflowStep.request_id.in_(ids))
        ).all()
        top = int(session.scalar(select(func.max(WorkflowStep.id))) or 0)
    sent = 0
    for name in names:
        others = [row.id for row in found if TASK_FOR_KIND[row.kind] != name]
        # Money steps first among the wrong kinds: those are the forgeries that would cost money.
        money = [row.id for row in found if row.kind in MONEY_KINDS and TASK_FOR_KIND[row.kind] != name]
        values: list[object] = rng.sample(money, min(len(money), per_task))
        values += rng.sample(others, min(len(others), per_task))
        values += [top + rng.randint(10_000, 10**9), str(rng.choice(others or [1])), -1]
        for value in values:
            celery_app.send_task(name, args=[value])
            sent += 1
    return sent


def _refused(stack: Stack) -> int:
    return sum("forged task refused" in line for line in stack.procs["worker"].log_text().splitlines())


def _soft_restart(stack: Stack) -> None:
    """SIGTERM to the worker's main process only, as an orchestrator stopping a container does: a warm
    shutdown lets running tasks finish and gives prefetched messages back. Then a fresh worker."""
    worker = stack.procs["worker"]
    assert worker.popen is not None
    worker.popen.send_signal(signal.SIGTERM)
    try:
        worker.popen.wait(timeout=WARM_SHUTDOWN_TIMEOUT)
    finally:
        worker.stop(signal.SIGKILL)  # kills only a warm shutdown that hung (TimeoutExpired fails the test)
    stack.start_worker()


@contextmanager
def _diagnostics(stack: Stack, broker: RedisServer, planned: list[Planned], clock: Clock) -> Iterator[None]:
    """On any failure, print what a debugger needs: the requests off course and the processes' logs."""
    try:
        yield
    except BaseException:
        try:
            print(f"phases (seconds since start): {clock.phases()}")
            wrong = _off_course(planned)
            print(f"{len(wrong)} requests off course:", *wrong[:40], sep="\n  ")
            _print_stuck_steps(planned)
        except Exception as exc:  # diagnostics must never hide the original failure
            print(f"(diagnostics failed: {exc!r})")
        print(stack.logs())
        print(f"===== redis\n{broker.proc.log_text()[-2000:]}")
        raise


def _print_stuck_steps(planned: list[Planned]) -> None:
    from cancelflow.db import transaction

    ids = [request.id for request, _ in _rows([p.cid for p in planned]).values()]
    with transaction() as session:
        stuck = session.scalars(
            select(WorkflowStep)
            .where(WorkflowStep.request_id.in_(ids), WorkflowStep.status != StepStatus.done)
            .order_by(WorkflowStep.id)
            .limit(40)
        ).all()
    for step in stuck:
        print(
            f"  step {step.id} {step.kind.value} {step.status.value} attempt={step.attempt} "
            f"next={step.next_attempt_at:%H:%M:%S} error={(step.last_error or '')[:160]}"
        )


# --- the test ------------------------------------------------------------------------------------------


def test_chaos(chaos_stack: Stack, chaos_redis: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    stack, broker = chaos_stack, chaos_redis
    rng = random.Random(SEED)
    clock = Clock(BUDGET)
    tally = Tally()
    restart_lock = threading.Lock()

    # Given 200 orders, each at a fulfillment service with its own way of answering, and a flaky gateway
    planned = _make_requests(stack, rng)
    clock.mark("orders")
    waves = [planned[:70], planned[70:140], planned[140:]]
    stack.gateway("/_admin/config", json={"fail_rate": GATEWAY_FAIL_RATE})
    killer = Killer(stack, random.Random(SEED + 1), restart_lock, tally)
    supervisor = Supervisor(stack, restart_lock, tally)

    def publish(wave: list[Planned]) -> None:
        for p in wave:
            submit(**p.message)

    def wait_stored(wave: list[Planned]) -> None:
        wait_for(lambda: _stored(wave), timeout=clock.left(60), what=f"{len(wave)} requests stored")

    def wait_in_flight(wave: list[Planned]) -> None:
        """Until a third of the wave has a plan, so a loss now hits route, notify and money steps too."""
        wait_for(lambda: _planned(wave) >= len(wave) // 3, timeout=clock.left(60), what="plans in flight")

    def broker_loss(action: Callable[[], None]) -> None:
        tally.lost_messages.append(_queued(broker))
        action()

    with _diagnostics(stack, broker, planned, clock):
        try:
            supervisor.start()
            killer.start()
            # When the first wave is stored and its steps are in flight, the broker loses everything
            publish(waves[0])
            wait_stored(waves[0])
            wait_in_flight(waves[0])
            broker_loss(lambda: broker.client().flushdb())
            tally.flushes += 1
            tally.duplicates += _duplicate(waves[0], rng, submits=10, steps=20)
            tally.forged += _forge(waves[0], rng, per_task=1)
            clock.mark("wave 1 + flush")

            # And the second wave meets a soft restart of the worker (SIGTERM: finish or give back work)
            publish(waves[1])
            with restart_lock:
                _soft_restart(stack)
            tally.soft_restarts += 1
            clock.mark("soft restart")
            wait_stored(waves[1])
            wait_in_flight(waves[1])
            clock.mark("wave 2")

            # And Redis itself is restarted: it comes back empty, a second loss of every message
            broker_loss(broker.restart)
            tally.redis_restarts += 1
            publish(waves[2])
            wait_stored(waves[2])
            tally.duplicates += _duplicate(planned, rng, submits=10, steps=30)
            tally.forged += _forge(planned, rng, per_task=2)
            clock.mark("Redis restart + wave 3")

            # Workers keep dying while the requests are worked through, at least MIN_KILLS times
            wait_for(lambda: tally.kills >= MIN_KILLS, timeout=clock.left(90), what=f"{MIN_KILLS} kills")
            killer.stop()
            clock.mark("kills")

            # Then every request ends where its policy says, with no money step left to run
            wait_for(
                lambda: _settled(planned), timeout=clock.left(180), interval=0.25, what="all requests settled"
            )
            clock.mark("settled")
        finally:
            killer.stop()
            supervisor.stop()
            stack.gateway("/_admin/config", json={"fail_rate": 0})
        figures = _check(stack, planned)

    # One log record (one line) per task lost to a kill; its rendered traceback repeats the phrase.
    mid_task = sum(
        "Worker exited prematurely: signal 9" in line
        for line in stack.procs["worker"].log_text().splitlines()
    )
    refused = _refused(stack)
    summary = (
        f"chaos: {N} requests (seed {SEED}), {tally.kills} SIGKILLs ({mid_task} mid-task), "
        f"{tally.soft_restarts} SIGTERM restart, "
        f"{tally.flushes} broker flush, {tally.redis_restarts} Redis restart "
        f"(messages lost: {' + '.join(map(str, tally.lost_messages))}), "
        f"{tally.duplicates} duplicate messages, {tally.forged} forged messages ({refused} refused), "
        f"gateway fail rate {GATEWAY_FAIL_RATE} -> "
        f"completed {figures['completed']}, rejected {figures['rejected']}, waiting {figures['waiting']}, "
        f"lost {figures['lost']}, duplicate movements {figures['duplicate_movements']}, "
        f"refunds {figures['refunds']} = planned {figures['planned']}"
        f"\nchaos phases (seconds since start): {clock.phases()}"
        f"\nchaos: {len(tally.crashes)} unplanned worker/beat exits, restarted by the supervisor"
        + "".join(f"\n  {crash}" for crash in tally.crashes)
    )
    from tests.conftest import OUTPUT_DIR

    (OUTPUT_DIR / "chaos-summary.txt").write_text(summary + "\n")  # the other phases write chaos-faults.txt
    with capsys.disabled():
        print(f"\n{summary}")
    assert tally.kills >= MIN_KILLS
    assert tally.forged > 0
    assert refused > 0, "no forged message was refused"
    assert (tally.flushes, tally.redis_restarts, tally.soft_restarts) == (1, 1, 1)
    # Only the planned kills stop a process: a broker flush or a Redis restart must not.
    assert tally.crashes == [], tally.crashes


def _check(stack: Stack, planned: list[Planned]) -> dict[str, Any]:
    """Every invariant the run must keep; returns the figures for the summary."""
    rows = _rows([p.cid for p in planned])
    lost = [p.cid for p in planned if p.cid not in rows]
    assert lost == [], f"lost requests: {lost}"
    assert _off_course(planned) == []

    by_policy: dict[str, list[tuple[Planned, Any, Any]]] = defaultdict(list)
    for p in planned:
        request, plan = rows[p.cid]
        by_policy[p.policy].append((p, request, plan))
    completed = by_policy["accept"] + by_policy["late"]
    plan_ids = [plan.id for _, plan in rows.values() if plan is not None]
    completed_plan_ids = {plan.id for _, _, plan in completed}

    # The fulfillment service that never answers: still waiting, with its deadline far ahead
    far = datetime.now(UTC) + timedelta(minutes=30)
    early = [p.cid for p, _, plan in by_policy["never"] if plan.deadline_at is None or plan.deadline_at < far]
    assert early == [], f"waiting plans without a far deadline: {early}"
    # A rejection says who rejected
    codes = Counter(request.rejection_code for _, request, _ in by_policy["reject"])
    assert codes == Counter({"fulfillment_rejected": MIX["reject"]})

    # Money: each completed plan paid its planned amount to its planned target, exactly once, everywhere
    for p, _, plan in completed:
        assert (plan.amount, plan.refund_target.value) == (p.amount, p.target), p.cid
    db_rows = _per_plan(MoneyTransaction, plan_ids)
    ledger = _per_plan(LoyaltyLedgerEntry, plan_ids)
    moved_events = _money_moved_events(plan_ids)
    movements: dict[int, list[Decimal]] = defaultdict(list)
    per_key: Counter[str] = Counter()
    ours = {str(plan_id) for plan_id in plan_ids}
    for kind in ("/refunds", "/transfers"):
        for movement in stack.gateway(kind)["data"]:
            key = movement["idempotency_key"]
            if key.split(":", 1)[0] in ours:
                movements[int(key.split(":", 1)[0])].append(Decimal(movement["amount"]))
                per_key[key] += 1

    duplicates = sum(n - 1 for n in per_key.values() if n > 1)
    # plan id -> (movements at the gateway or in the ledger, money_transactions rows, money.moved events)
    not_once: dict[int, tuple[int, int, int]] = {}
    stray = []  # money that moved for a plan that must not pay (rejected, still waiting)
    for plan_id in plan_ids:
        external = len(movements.get(plan_id, [])) + ledger.get(plan_id, (0, Decimal(0)))[0]
        recorded = db_rows.get(plan_id, (0, Decimal(0)))[0]
        if plan_id in completed_plan_ids:
            duplicates += max(0, external - 1) + max(0, recorded - 1) + max(0, moved_events[plan_id] - 1)
            if (external, recorded, moved_events[plan_id]) != (1, 1, 1):
                not_once[plan_id] = (external, recorded, moved_events[plan_id])
        elif external or recorded or moved_events[plan_id]:
            stray.append(plan_id)
    assert not_once == {}, f"{duplicates} duplicate movements; (movements, rows, events) per plan: {not_once}"
    assert stray == [], f"money moved for plans that did not complete: {stray}"

    refunded = sum((sum(amounts, Decimal(0)) for amounts in movements.values()), Decimal(0)) + sum(
        (total for _, total in ledger.values()), Decimal(0)
    )
    planned_total = sum((plan.amount for _, _, plan in completed), Decimal(0))
    assert refunded == planned_total == sum((p.amount for p, _, _ in completed), Decimal(0))
    recorded_total = sum((total for _, total in db_rows.values()), Decimal(0))
    assert recorded_total == planned_total

    # The event log tells the same story as the rows: the newest status event is the current status
    requests = {request.id: request.status.value for request, _ in rows.values()}
    plans = {plan.id: plan.status.value for _, plan in rows.values() if plan is not None}
    assert _last_status_events("request", list(requests)) == requests
    assert _last_status_events("plan", list(plans)) == plans

    return {
        "completed": len(completed),
        "rejected": len(by_policy["reject"]),
        "waiting": len(by_policy["never"]),
        "lost": len(lost),
        "duplicate_movements": duplicates,
        "refunds": refunded,
        "planned": planned_total,
    }
