"""The webhook delivery and operator job machines judged by use: random sequences of what workers, the sweep,
receivers and staff do, on real rows.

Each example writes one row (a webhook delivery of a real request to a real subscription, an export job, or a
bulk tag job over real requests) inside an outer transaction rolled back afterwards, then Hypothesis drives the
real service functions. A model written here, independently of `DELIVERY_TRANSITIONS` and `JOB_TRANSITIONS`,
says what each call must do, or that it must be refused and change nothing; after every call the row must agree
with it and the invariants must hold:

* the row's status is the model's, and a finished row stays finished (a delivery is started again only by hand);
* a move the machine refuses raises `InvalidTransition` (deliveries) or is left undone (jobs, whose one mutator
  is a guarded UPDATE) and changes nothing;
* counters never go backwards: a delivery's attempts only grow within a cycle (redelivery by hand starts a new
  cycle at zero, its history kept) and every attempt has its `WebhookAttempt` row; a job's progress never
  exceeds its total and only falls when a crashed export is claimed again (its file is rewritten whole);
* a subscription's pauses and resumptions each have their event row, chained from active to its current state.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from cancelflow.config import get_settings
from cancelflow.db import get_engine
from cancelflow.errors import InvalidTransition
from cancelflow.models import (
    BulkJob,
    DeliveryStatus,
    Event,
    ExportFormat,
    ExportJob,
    JobStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSubscription,
)
from cancelflow.services import batch_jobs, bulk, exports
from cancelflow.services.clock import now
from cancelflow.services.webhooks import delivery as webhook_delivery
from cancelflow.services.webhooks import subscriptions as webhook_subscriptions
from tests.factories import new_request
from tests.unit.test_state_machines_stateful import MACHINE_SETTINGS as SHARED_SETTINGS

# What the model knows, written out here rather than read from the tables under test.
DELIVERY_STATUSES = ("pending", "failed", "delivered", "dead")
DELIVERY_FINISHED = {"delivered", "dead"}
JOB_STATUSES = ("pending", "running", "done", "failed", "expired")
JOB_OPEN = {"pending", "running"}  # what a run, a failure or a finish may still move
JOB_TERMINAL = {"failed", "expired"}
FAILURES = ("statement timeout", "worker error")
MAX_ATTEMPTS = 4  # small, so sequences of 20 moves reach the limit
PAUSE_AFTER = 3
# What a receiver does with one POST: its status code, or None for no answer at all.
ANSWERS: dict[str, int | None] = {
    "accepted": 204,
    "server error": 503,
    "busy": 429,
    "gone": 410,
    "timeout": None,
    "down": None,
}


def _receiver(answer: str) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        if answer == "timeout":
            raise httpx.ReadTimeout("no answer in time", request=request)
        if answer == "down":
            raise httpx.ConnectError("connection refused", request=request)
        code = ANSWERS[answer]
        assert code is not None
        return httpx.Response(code)

    return httpx.Client(transport=httpx.MockTransport(handle))


class _OnRealRows(RuleBasedStateMachine):
    """An outer transaction per example, rolled back at its end; settings changed for it are restored."""

    overrides: dict[str, Any] = {}

    def __init__(self) -> None:
        super().__init__()
        self.connection = get_engine().connect()
        self.outer = self.connection.begin()
        self.session = Session(bind=self.connection, join_transaction_mode="create_savepoint")
        self.saved = {name: getattr(get_settings(), name) for name in self.overrides}
        for name, value in self.overrides.items():
            setattr(get_settings(), name, value)

    def teardown(self) -> None:
        for name, value in self.saved.items():
            setattr(get_settings(), name, value)
        self.session.close()
        self.outer.rollback()
        self.connection.close()

    def fresh(self, model: type[Any], row_id: Any) -> Any:
        self.session.flush()
        self.session.expire_all()
        return self.session.get_one(model, row_id)


class Deliveries(_OnRealRows):
    """One delivery of one request to one subscription: receivers answer (or not), retries fall due, the sweep
    re-sends, staff redeliver and resume, messages arrive twice, and forbidden moves are tried on the row."""

    overrides = {
        "step_max_attempts": MAX_ATTEMPTS,
        "webhook_pause_after": PAUSE_AFTER,
        # Longer than a duplicate message's tolerance: a retry is not due until the model says it is.
        "retry_backoff_base": timedelta(seconds=30),
        "retry_backoff_max": timedelta(minutes=5),
    }

    @initialize()
    def world(self) -> None:
        request = new_request(session=self.session)
        subscription = webhook_subscriptions.create_subscription(
            self.session, url="http://127.0.0.1:9/hook", events=["*"]
        )
        delivery = WebhookDelivery(
            subscription_id=subscription.id,
            event_type="request.approved",
            request_id=request.id,
            payload={"request": request.id},
            status=DeliveryStatus.pending,
            next_attempt_at=now(),
        )
        self.session.add(delivery)
        self.session.flush()
        self.delivery_id, self.subscription_id = delivery.id, subscription.id
        # The model: status, attempts in this cycle, attempt rows in all, the timer, the subscription.
        self.status = "pending"
        self.attempt = 0
        self.attempt_rows = 0
        self.due = True
        self.failures = 0
        self.paused = False
        self.pauses: list[tuple[str, str]] = []
        self.last_attempt = 0

    def row(self) -> WebhookDelivery:
        delivery: WebhookDelivery = self.fresh(WebhookDelivery, self.delivery_id)
        return delivery

    def expected_try(self) -> str | None:
        """What `deliver` must answer without trying, or None when it must try."""
        if self.status in DELIVERY_FINISHED:
            return f"already_{self.status}"
        if self.status == "failed" and not self.due:
            return "not_due"
        if self.paused:
            return "paused"
        return None

    @rule(answer=st.sampled_from(sorted(ANSWERS)), twice=st.booleans(), after_backoff=st.booleans())
    def worker_delivers(self, answer: str, twice: bool, after_backoff: bool) -> None:
        """The deliver message (and, with `twice`, its duplicate) meets a receiver answering `answer`; with
        `after_backoff`, a failed row's retry has fallen due first (the retry message)."""
        if after_backoff and self.status == "failed" and not self.due:
            self.retry_falls_due()
        for _ in range(2 if twice else 1):
            skipped = self.expected_try()
            result = webhook_delivery.deliver(self.session, self.delivery_id, client=_receiver(answer))
            event(f"deliver {self.status} -> {result}")
            if skipped is not None:
                assert result == skipped
                continue
            self.attempt += 1
            self.attempt_rows += 1
            code = ANSWERS[answer]
            if code is not None and 200 <= code < 300:
                expected, self.status, self.failures = "delivered", "delivered", 0
            elif self.attempt >= MAX_ATTEMPTS or (
                code is not None and 400 <= code < 500 and code not in (408, 429)
            ):
                expected = self.status = "dead"  # a 4xx retrying cannot fix, or the attempts ran out
            else:
                expected, self.status, self.due = "retry", "failed", False
            if expected != "delivered":
                self.failures += 1
                if self.failures >= PAUSE_AFTER and not self.paused:
                    self.paused = True
                    self.pauses.append(("active", "paused"))
            assert result == expected

    @precondition(lambda self: self.status == "failed" and not self.due)
    @rule()
    def retry_falls_due(self) -> None:
        self.row().next_attempt_at = now() - timedelta(seconds=1)
        self.due = True

    @rule()
    def sweep(self) -> None:
        before = self.row().next_attempt_at
        webhook_delivery.sweep_due(self.session)
        if self.status in {"pending", "failed"} and self.due and not self.paused:
            event(f"sweep re-sends {self.status}")
            self.status, self.due = "pending", False
            assert self.row().next_attempt_at > before
        else:
            assert self.row().next_attempt_at == before

    @rule()
    def staff_redeliver(self) -> None:
        event(f"redeliver {self.status}")
        webhook_delivery.redeliver(self.session, self.delivery_id)
        self.status, self.attempt, self.due = "pending", 0, False

    @rule()
    def staff_resume(self) -> None:
        webhook_subscriptions.resume_subscription(self.session, self.subscription_id)
        if self.paused:
            event("resume")
            self.paused, self.failures = False, 0
            self.pauses.append(("paused", "active"))
            if self.status in {"pending", "failed"}:
                self.due = True

    @rule(to=st.sampled_from(DELIVERY_STATUSES))
    def forbidden_move(self, to: str) -> None:
        """The one mutator, asked for a move the model forbids, refuses it and changes nothing."""
        allowed = to == "pending" or self.status not in DELIVERY_FINISHED
        if allowed:
            return
        delivery = self.row()
        before = (delivery.status, delivery.attempt, delivery.modified_date)
        with pytest.raises(InvalidTransition):
            webhook_delivery._move(delivery, DeliveryStatus(to), now())
        event(f"refused {self.status} -> {to}")
        delivery = self.row()
        assert (delivery.status, delivery.attempt, delivery.modified_date) == before

    @invariant()
    def row_agrees_with_the_model(self) -> None:
        if not hasattr(self, "status"):
            return
        delivery = self.row()
        assert delivery.status.value == self.status
        assert delivery.attempt == self.attempt
        # Attempts only grow within a cycle; only redelivery by hand (to pending, at zero) lowers them.
        assert delivery.attempt >= self.last_attempt or (delivery.attempt == 0 and self.status == "pending")
        self.last_attempt = delivery.attempt
        assert delivery.attempt <= MAX_ATTEMPTS
        attempts = self.session.scalar(
            select(func.count())
            .select_from(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == self.delivery_id)
        )
        assert attempts == self.attempt_rows  # every attempt has its row, and nothing else makes one
        assert delivery.delivered_at is not None or self.status != "delivered"
        subscription = self.fresh(WebhookSubscription, self.subscription_id)
        assert (subscription.paused_at is not None) == self.paused
        assert subscription.consecutive_failures == self.failures
        moves = self.session.execute(
            select(Event.from_status, Event.to_status)
            .where(Event.entity == "webhook_subscription", Event.entity_id == self.subscription_id)
            .order_by(Event.id)
        ).all()
        assert [(m.from_status, m.to_status) for m in moves] == self.pauses


class _Jobs(_OnRealRows):
    """What both kinds of job share in the model: status, progress, total, and forbidden moves left undone."""

    job_model: type[BulkJob] | type[ExportJob]
    job_id: Any = None
    # The model of the row, set when the example writes it.
    status: str
    done: int
    total: int
    error: str | None
    seen_terminal: str | None

    def job(self) -> Any:
        return self.fresh(self.job_model, self.job_id)

    def check_unchanged(self, before: tuple[Any, ...]) -> None:
        job = self.job()
        assert (job.status, job.done, job.total, job.error, job.finished_at) == before

    def snapshot(self) -> tuple[Any, ...]:
        job = self.job()
        return (job.status, job.done, job.total, job.error, job.finished_at)

    @rule(to=st.sampled_from(JOB_STATUSES))
    def forbidden_move(self, to: str) -> None:
        """The one mutator, asked for a move the model forbids, leaves the job as it is."""
        allowed = (self.status in JOB_OPEN and to in {"running", "done", "failed"}) or (
            self.status == "done" and to == "expired"
        )
        if allowed:
            return
        before = self.snapshot()
        batch_jobs.move(self.session, self.job_model, JobStatus(to), self.job_id, error="late")
        event(f"refused {self.status} -> {to}")
        self.check_unchanged(before)

    def fail(self, error: str) -> None:
        event(f"fail {self.status}")
        if self.status in JOB_OPEN:
            self.status, self.error = "failed", error

    @rule(cause=st.sampled_from(FAILURES))
    def run_fails(self, cause: str) -> None:
        """The run fails: a statement runs past the statement timeout (the database's refusal is recorded as
        the failure), or the worker raises."""
        if cause == "worker error":
            self.mark_failed("boom")
            return
        with pytest.raises(OperationalError) as refused:
            self.run_too_long()
        self.mark_failed(str(refused.value.orig))

    def run_too_long(self) -> None:
        with self.session.begin_nested():
            self.session.execute(text("SET LOCAL statement_timeout = '10ms'"))
            self.session.execute(text("SELECT pg_sleep(1)"))

    def mark_failed(self, error: str) -> None:
        raise NotImplementedError

    @invariant()
    def row_agrees_with_the_model(self) -> None:
        if self.job_id is None:
            return
        job = self.job()
        assert job.status.value == self.status
        assert (job.done, job.total) == (self.done, self.total)
        assert 0 <= job.done <= job.total
        assert (job.error is not None) == (self.error is not None)
        if self.error is not None:
            assert job.error == self.error[:2000]
        assert (job.finished_at is not None) == (self.status not in JOB_OPEN)
        if self.seen_terminal is not None:
            assert self.status == self.seen_terminal
        elif self.status in JOB_TERMINAL:
            self.seen_terminal = self.status


class ExportJobs(_Jobs):
    """One export: the worker claims it (and claims it again after a crash, or from a stale message), reports
    progress, finishes or fails, a statement times out, the retention passes and the expiry sweep runs."""

    job_model = ExportJob

    @initialize(total=st.integers(1, 50))
    def world(self, total: int) -> None:
        job = batch_jobs.add(
            self.session, ExportJob(format=ExportFormat.csv, status=JobStatus.pending, total=total, params={})
        )
        self.job_id = job.id
        self.status, self.done, self.total, self.error = "pending", 0, total, None
        self.seen_terminal = None

    @rule(data=st.data())
    def worker_claims(self, data: st.DataObject) -> None:
        """The run message (first, again after a crash, or a stale duplicate) claims the job; the run then
        writes (reporting progress, perhaps to the end) or crashes at once."""
        before = self.snapshot()
        claimed = exports.claim_job(self.session, self.job_id)
        event(f"claim {self.status}")
        if self.status in JOB_OPEN:
            assert claimed is not None
            self.status, self.done = "running", 0  # a claimed job's file is written again from its start
            then = data.draw(st.sampled_from(["crashes", "writes", "fails"]), label="then")
            if then == "writes":
                self.worker_reports_progress(data)
            elif then == "fails":
                self.run_fails(data.draw(st.sampled_from(FAILURES), label="cause"))
        else:
            assert claimed is None
            self.check_unchanged(before)

    @precondition(lambda self: self.job_id is not None)
    @rule(data=st.data())
    def worker_reports_progress(self, data: st.DataObject) -> None:
        """The writer reports how many rows it has written; a writer of an earlier run, still going after the
        job was claimed again or finished, reports too: a finished job's row must not change."""
        if self.status != "running":
            before = self.snapshot()
            exports.record_progress(self.session, self.job_id, self.total)
            event(f"stale progress on {self.status}")
            self.check_unchanged(before)
            return
        done = data.draw(st.integers(self.done, self.total), label="done")
        exports.record_progress(self.session, self.job_id, done)
        self.done = done
        event("progress on running")
        if data.draw(st.booleans(), label="then finishes"):
            self.worker_finishes(data)

    @precondition(lambda self: self.job_id is not None)
    @rule(data=st.data())
    def worker_finishes(self, data: st.DataObject) -> None:
        """The writer has written every row (or a stale writer of an earlier run has)."""
        rows = data.draw(st.integers(0, 50), label="rows")
        exports.finish_job(self.session, self.job_id, path=Path("/nonexistent/export.csv"), rows=rows)
        event(f"finish {self.status}")
        if self.status in JOB_OPEN:
            self.status, self.done, self.total = "done", rows, rows

    def mark_failed(self, error: str) -> None:
        exports.fail_job(self.session, self.job_id, error)
        self.fail(error)

    @rule()
    def retention_passes_and_the_expiry_runs(self) -> None:
        job = self.job()
        if job.finished_at is not None:
            job.finished_at = job.finished_at - timedelta(days=2)
            self.session.flush()
        expired = exports.expire_jobs(self.session, retention=timedelta(days=1))
        event(f"expiry on {self.status}")
        if self.status == "done":
            assert expired >= 1
            self.status = "expired"
            assert self.job().file_path is None


class BulkJobs(_Jobs):
    """One bulk tag job over named requests (the last id names none): chunks run (and run again from a
    duplicate or stale message), the run fails, a statement times out."""

    job_model = BulkJob
    REQUESTS = 2

    @initialize()
    def world(self) -> None:
        ids = sorted(new_request(session=self.session).id for _ in range(self.REQUESTS))
        self.ids = [*ids, ids[-1] + 1_000_000]  # no such request: it drops out of the total
        job = batch_jobs.add(
            self.session,
            BulkJob(
                kind=bulk.KINDS["remove"],
                status=JobStatus.pending,
                total=len(self.ids),
                params={"op": "remove", "keys": ["vip"], "channel_id": None, "ids": self.ids},
            ),
        )
        self.job_id = job.id
        self.status, self.done, self.total, self.error = "pending", 0, len(self.ids), None
        self.position = 0
        self.seen_terminal = None

    @precondition(lambda self: self.job_id is not None)
    @rule(chunks=st.integers(1, 3))
    def worker_runs_chunks(self, chunks: int) -> None:
        """The run message, or a duplicate or stale one: `chunks` chunks in a row."""
        for _ in range(chunks):
            self.run_a_chunk()

    def run_a_chunk(self) -> None:
        before = self.snapshot()
        more = bulk.run_chunk(self.session, self.job_id, chunk_size=1)
        event(f"chunk on {self.status}")
        if self.status not in JOB_OPEN:
            assert more is False
            self.check_unchanged(before)
            return
        named = self.ids[self.position]
        self.position += 1
        self.done += 1 if self.position <= self.REQUESTS else 0
        assert named == self.job().last_id
        if self.position == len(self.ids):
            assert more is False
            self.status, self.total = "done", self.done  # the ids that named requests
        else:
            assert more is True
            self.status = "running"

    def mark_failed(self, error: str) -> None:
        bulk.mark_failed(self.session, self.job_id, error)
        self.fail(error)


# The shared settings (no shrinking on a real database), with one fixed sequence of examples per run: a failure
# shows up the same way every time, not only on the run that happened to draw it.
MACHINE_SETTINGS = settings(SHARED_SETTINGS, derandomize=True)


def test_webhook_delivery_machine(database: str) -> None:
    run_state_machine_as_test(Deliveries, settings=MACHINE_SETTINGS)


def test_export_job_machine(database: str) -> None:
    run_state_machine_as_test(ExportJobs, settings=settings(MACHINE_SETTINGS, max_examples=100))


def test_bulk_job_machine(database: str) -> None:
    run_state_machine_as_test(
        BulkJobs, settings=settings(MACHINE_SETTINGS, max_examples=30, stateful_step_count=15)
    )
