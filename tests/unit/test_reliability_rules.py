"""DESIGN.md section 3, rule by rule, where a rule is a mechanism rather than a workflow outcome."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from cancelflow.errors import PermanentError, TransientError
from cancelflow.models import CancellationPlan, Event, WorkflowStep
from cancelflow.models.enums import PlanStatus, StepKind, StepStatus
from cancelflow.services import after_commit, intake, steps
from tests.factories import approved_plan, new_order, step_of


class TestRule2EnqueueAfterCommit:
    def test_sends_only_after_commit(self, sent: list[after_commit.Send]) -> None:
        from cancelflow.db import new_session

        session = new_session()
        try:
            after_commit.enqueue_after_commit(session, "cancellations.route", 7)
            after_commit.enqueue_after_commit(session, "cancellations.route", 7)  # asked twice, sent once
            session.execute(text("SELECT 1"))
            assert sent == []
            session.commit()
        finally:
            session.close()
        assert sent == [after_commit.Send("cancellations.route", (7,))]

    def test_a_job_keyed_by_uuid_is_sent_by_its_string(self, sent: list[after_commit.Send]) -> None:
        import uuid

        from cancelflow.db import new_session

        job_id = str(uuid.uuid4())
        session = new_session()
        try:
            session.execute(text("SELECT 1"))
            after_commit.enqueue_after_commit(session, "tags.bulk", job_id)
            session.rollback()  # what a rolled-back job row asked for is never sent
            session.execute(text("SELECT 1"))
            after_commit.enqueue_after_commit(session, "exports.run", job_id)
            session.commit()
        finally:
            session.close()
        assert sent == [after_commit.Send("exports.run", (job_id,))]

    def test_a_released_savepoint_is_not_a_commit(self, sent: list[after_commit.Send]) -> None:
        from cancelflow.db import new_session

        session = new_session()
        try:
            session.execute(text("SELECT 1"))
            with session.begin_nested():
                after_commit.enqueue_after_commit(session, "cancellations.close", 3)
            assert sent == []
            session.commit()
        finally:
            session.close()
        assert sent == [after_commit.Send("cancellations.close", (3,))]

    def test_rollback_drops_the_sends(self, sent: list[after_commit.Send]) -> None:
        from cancelflow.db import new_session

        session = new_session()
        try:
            after_commit.enqueue_after_commit(session, "payments.refund", 1)
            session.execute(text("SELECT 1"))
            session.rollback()
            session.commit()  # a later, empty commit must not resurrect them
        finally:
            session.close()
        assert sent == []

    @pytest.mark.usefixtures("sent")  # puts the broker sender back after the broken one below
    def test_failed_send_after_commit_is_left_to_the_sweeper(self, database: str) -> None:
        from cancelflow.db import new_session

        def broken(_: after_commit.Send) -> None:
            raise ConnectionError("broker down")

        after_commit.set_sender(broken)
        session = new_session()
        try:
            after_commit.enqueue_after_commit(session, "payments.refund", 1)
            session.commit()  # must not raise: the commit already happened
        finally:
            session.close()


class TestRule4CeleryConfiguration:
    def test_at_least_once_settings(self) -> None:
        from cancelflow.config import Settings
        from cancelflow.worker.config import celery_config

        conf = celery_config(Settings(broker_url="redis://127.0.0.1:6379/0", database_url="postgresql://x/y"))
        assert conf["task_acks_late"] is True
        assert conf["task_reject_on_worker_lost"] is True
        assert conf["worker_prefetch_multiplier"] == 1  # 4 lost steps with the broker (DESIGN-NOTES)
        assert conf["task_serializer"] == "json"
        assert conf["accept_content"] == ["json"]
        assert conf["broker_transport_options"]["visibility_timeout"] == 3600
        assert Settings().max_countdown < Settings().visibility_timeout

    def test_rabbitmq_gets_quorum_queues_and_confirms(self) -> None:
        from cancelflow.config import Settings
        from cancelflow.worker.config import celery_config

        conf = celery_config(Settings(broker_url="amqp://guest:guest@127.0.0.1:5672//", database_url="x"))
        assert conf["broker_transport_options"] == {"confirm_publish": True}
        assert {q.queue_arguments["x-queue-type"] for q in conf["task_queues"]} == {"quorum"}

    def test_task_arguments_are_ids_only(self) -> None:
        from cancelflow.worker.app import celery_app

        celery_app.loader.import_default_modules()
        import inspect

        for name, task in celery_app.tasks.items():
            if name.startswith("celery.") or name == "cancellations.submit":
                continue
            params = [p for p in inspect.signature(task.run).parameters.values() if p.name != "self"]
            # ids (ints or uuid strings) only: Flower shows arguments, so no IBAN, name or e-mail may travel
            assert all(p.name.endswith("_id") or p.name == "counter_key" for p in params), (name, params)
            assert all(p.annotation in ("int", "str", "str | None") for p in params), (name, params)

    def test_task_events_wait_for_a_monitor_unless_configured(self) -> None:
        from cancelflow.config import Settings
        from cancelflow.worker.config import celery_config

        base = {"broker_url": "redis://127.0.0.1:6379/0", "database_url": "postgresql://x/y"}
        conf = celery_config(Settings(**base))
        # Flower turns them on while it watches; nobody pays three publishes per task otherwise
        assert conf["worker_send_task_events"] is False
        assert conf["task_send_sent_event"] is False
        assert celery_config(Settings(**base, worker_task_events=True))["worker_send_task_events"] is True


class TestRule5ErrorClassification:
    def _plan_with_route_step(self, session: Session) -> tuple[CancellationPlan, WorkflowStep]:
        plan = approved_plan(session)
        return plan, step_of(session, plan, StepKind.route)

    def test_transient_failure_backs_off_and_stays_pending(self, session: Session) -> None:
        _, step = self._plan_with_route_step(session)
        assert (
            steps.record_failure(session, step.id, "TransientError: 503", permanent=False)
            == StepStatus.pending
        )
        session.refresh(step)
        assert step.attempt == 1
        assert step.last_error == "TransientError: 503"
        assert (
            session.query(Event).filter_by(entity="step", entity_id=step.id, kind="step.retry").count() == 1
        )

    def test_budget_exhausted_goes_dead_and_fails_the_plan(self, session: Session) -> None:
        plan, step = self._plan_with_route_step(session)
        for _ in range(step.max_attempts - 1):
            steps.record_failure(session, step.id, "TransientError: timeout", permanent=False)
        assert (
            steps.record_failure(session, step.id, "TransientError: timeout", permanent=False)
            == StepStatus.dead
        )
        session.refresh(plan)
        assert plan.status == PlanStatus.failed
        assert plan.failed_from == "waiting"
        assert "dead" in (plan.failure_reason or "")

    def test_permanent_failure_is_dead_at_once(self, session: Session) -> None:
        plan, step = self._plan_with_route_step(session)
        assert (
            steps.record_failure(session, step.id, "PermanentError: 404", permanent=True) == StepStatus.dead
        )
        session.refresh(plan)
        assert plan.status == PlanStatus.failed
        session.refresh(step)
        assert step.attempt == 1

    def test_a_retry_after_is_waited_out_even_past_the_backoff_cap(self, session: Session) -> None:
        _, step = self._plan_with_route_step(session)
        before = datetime.now(UTC)
        steps.record_failure(
            session, step.id, "TransientError: 409 in flight", permanent=False, retry_after=30
        )
        session.refresh(step)
        assert step.attempt == 1
        assert step.next_attempt_at >= before + timedelta(seconds=30)  # the backoff alone caps at 2 s here

    @pytest.mark.parametrize(
        ("header", "seconds"),
        [
            ("7", 7.0),
            ("0", 0.0),
            ("-3", 0.0),
            ("999999", 3600.0),
            ("soon", None),
            (None, None),
            ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past: retry now
            ("Mon, 01 Jan 99999999999999999999 00:00:00 GMT", None),  # unreadable: backoff alone
        ],
    )
    def test_retry_after_header_is_read_as_seconds_or_a_date(
        self, header: str | None, seconds: float | None
    ) -> None:
        from cancelflow.integrations.http import classify

        response = httpx.Response(409, headers={"Retry-After": header} if header is not None else {})
        with pytest.raises(TransientError) as caught:
            classify(response, "refund")
        assert caught.value.retry_after == seconds

    def test_retry_after_as_a_future_date(self) -> None:
        from email.utils import format_datetime

        from cancelflow.integrations.http import retry_after

        when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
        assert 100 < (retry_after(when) or 0) <= 120

    def test_backoff_grows_and_is_capped(self) -> None:
        delays = [steps.backoff(n) for n in range(1, 30)]
        assert all(d <= timedelta(seconds=2) for d in delays)  # tests cap it at 2 s
        assert steps.backoff(1) <= timedelta(seconds=0.2)

    @pytest.mark.parametrize(
        ("status", "error"),
        [
            (500, TransientError),
            (503, TransientError),
            (429, TransientError),
            (408, TransientError),
            (400, PermanentError),
            (404, PermanentError),
            (401, PermanentError),
        ],
    )
    def test_notifier_classifies_http_answers(self, status: int, error: type[Exception]) -> None:
        from cancelflow.integrations.fulfillment import SIGNATURE_HEADER, HttpNotifier, sign

        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(status)

        notifier = HttpNotifier(httpx.Client(transport=httpx.MockTransport(handler)))
        with pytest.raises(error):
            notifier.notify(
                callback_url="http://svc.example/cb/", secret="s3cret", kind="CANCELLATION_REQUEST"
            )
        [request] = seen
        assert str(request.url) == "http://svc.example/cb/fulfillment_order_notification"
        assert request.content == b'{"kind":"CANCELLATION_REQUEST"}'
        assert request.headers[SIGNATURE_HEADER] == sign("s3cret", request.content)

    def test_notifier_connection_error_is_transient(self) -> None:
        from cancelflow.integrations.fulfillment import HttpNotifier

        def handler(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused", request=request)

        with pytest.raises(TransientError):
            HttpNotifier(httpx.Client(transport=httpx.MockTransport(handler))).notify(
                callback_url="http://svc.example", secret="s", kind="CANCELLATION_REQUEST"
            )


class TestRule6OneSweepAtATime:
    def test_a_second_sweep_does_nothing_while_the_first_holds_the_lock(self, database: str) -> None:
        from cancelflow.db import get_engine, transaction

        order = new_order()
        with transaction() as session:  # a pending step that is due
            intake.submit(
                session,
                {
                    "client_request_id": secrets.token_hex(6),
                    "order_item": order.item_id,
                    "reason": 1,
                },
            )
        with get_engine().connect() as holder:
            holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": steps.SWEEP_LOCK_KEY})
            try:
                with transaction() as session:
                    session.execute(
                        text(
                            "UPDATE workflow_steps SET next_attempt_at = now() - interval '1 day' "
                            "WHERE status = 'pending'"
                        )
                    )
                with transaction() as session:
                    assert steps.sweep_due(session) == 0
            finally:
                holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": steps.SWEEP_LOCK_KEY})
                holder.commit()
        with transaction() as session:
            session.execute(
                text(
                    "UPDATE workflow_steps SET next_attempt_at = now() - interval '1 day' "
                    "WHERE status = 'pending'"
                )
            )
        with transaction() as session:
            assert steps.sweep_due(session) >= 1  # the lock is free again: the due step is re-sent
