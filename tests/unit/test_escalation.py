"""Reminders, reply deadlines and escalation, in-process, with time moved by time-machine."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from cancelflow.errors import Invalid, InvalidTransition, NotFound
from cancelflow.models import (
    CancellationPlan,
    CancellationRequest,
    Event,
    FulfillmentOrder,
    FulfillmentService,
    MerchantRequest,
    OrderItem,
    WorkflowStep,
)
from cancelflow.models.enums import FORequestStatus, FOStatus, PlanStatus, RequestStatus, StepKind
from cancelflow.services import (
    after_commit,
    approval,
    escalation,
    fulfillment_orders,
    intake,
    replies,
    routing,
)
from cancelflow.services.importer import import_payload
from tests.factories import order_payload, reference_payload, routed_plan, service_payload

T0 = datetime(2031, 3, 1, 9, 0, tzinfo=UTC)
LIMIT = 100_000  # other tests' committed plans are visible too; never let them crowd ours out


@dataclass
class Waiting:
    plan: CancellationPlan
    fo: FulfillmentOrder
    service_id: int


@pytest.fixture
def clock() -> Iterator[time_machine.Coordinates]:
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


def waiting_plan(session: Session, **policy: Any) -> Waiting:
    """A plan in confirmation_waiting, its fulfillment order asked (and notified once) at T0."""
    svc = service_payload(**policy)
    plan = routed_plan(session, svc)
    assert plan.status == PlanStatus.confirmation_waiting
    fo = session.scalars(
        select(FulfillmentOrder).where(FulfillmentOrder.cancellation_plan_id == plan.id)
    ).one()
    return Waiting(plan, fo, svc["id"])


def chase(session: Session) -> escalation.ChaseResult:
    result = escalation.chase(session, limit=LIMIT)
    session.expire_all()
    return result


def notify_keys(session: Session, plan: CancellationPlan) -> list[str]:
    return list(
        session.scalars(
            select(WorkflowStep.idempotency_key)
            .where(WorkflowStep.plan_id == plan.id, WorkflowStep.kind == StepKind.notify)
            .order_by(WorkflowStep.id)
        )
    )


def merchant_request(session: Session, fo: FulfillmentOrder) -> MerchantRequest:
    mr = fulfillment_orders.open_cancellation_request(session, fo.id)
    assert mr is not None
    return mr


def events(session: Session, entity: str, entity_id: int, kind: str) -> list[Event]:
    return list(
        session.scalars(
            select(Event)
            .where(Event.entity == entity, Event.entity_id == entity_id, Event.kind == kind)
            .order_by(Event.id)
        )
    )


class TestReminders:
    def test_a_month_of_daily_reminders_then_escalation(
        self, session: Session, clock: time_machine.Coordinates
    ) -> None:
        # Given a service with 30 days to answer, reminded daily 29 times
        w = waiting_plan(
            session, deadline_seconds=30 * 86400, reminder_interval_seconds=86400, reminder_count=29
        )
        key = f"{w.plan.id}:notify:{w.fo.id}"
        assert notify_keys(session, w.plan) == [f"{key}:1"]
        # When the chase runs every day, twice
        for day in range(1, 30):
            clock.move_to(T0 + timedelta(days=day, minutes=1))
            chase(session)
            chase(session)  # a second beat at the same moment sends nothing more
            # Then each day brings exactly one more reminder, with the next key
            assert notify_keys(session, w.plan)[-1] == f"{key}:{day + 1}"
            assert len(notify_keys(session, w.plan)) == day + 1
            assert merchant_request(session, w.fo).reminders_sent == day
        assert (
            "fulfillment.notify",
            (
                session.scalars(
                    select(WorkflowStep.id).where(WorkflowStep.idempotency_key == f"{key}:30")
                ).one(),
            ),
        ) in [(s.task, s.args) for s in after_commit.pending_sends(session)]
        # And at the deadline the plan is escalated, still waiting, once
        clock.move_to(T0 + timedelta(days=30, minutes=1))
        chase(session)
        chase(session)
        plan = session.get_one(CancellationPlan, w.plan.id)
        assert plan.status == PlanStatus.confirmation_waiting
        assert plan.escalated_at == T0 + timedelta(days=30, minutes=1)
        assert merchant_request(session, w.fo).escalated is True
        [escalated] = events(session, "plan", w.plan.id, "plan.escalated")
        assert escalated.data["fulfillment_order_ids"] == [w.fo.id]
        assert escalated.data["reminders_sent"] == 29
        # And no reminder follows an escalation
        clock.move_to(T0 + timedelta(days=40))
        chase(session)
        assert len(notify_keys(session, w.plan)) == 30

    def test_after_an_outage_one_reminder_is_sent_and_missed_ones_are_skipped(
        self, session: Session, clock: time_machine.Coordinates
    ) -> None:
        w = waiting_plan(
            session, deadline_seconds=10 * 3600, reminder_interval_seconds=3600, reminder_count=5
        )
        clock.move_to(T0 + timedelta(hours=3, minutes=30))
        chase(session)
        key = f"{w.plan.id}:notify:{w.fo.id}"
        assert notify_keys(session, w.plan) == [f"{key}:1", f"{key}:4"]
        [sent] = events(session, "plan", w.plan.id, "plan.reminder_sent")
        assert (sent.data["reminder"], sent.data["skipped"]) == (3, 2)
        clock.move_to(T0 + timedelta(hours=4, minutes=1))
        chase(session)
        assert notify_keys(session, w.plan)[-1] == f"{key}:5"

    def test_no_reminder_falls_on_or_after_the_deadline(
        self, session: Session, clock: time_machine.Coordinates
    ) -> None:
        # Slots at 60 s and 120 s; the third (180 s) would come after the 150 s deadline
        w = waiting_plan(session, deadline_seconds=150, reminder_interval_seconds=60, reminder_count=5)
        for seconds in (61, 121, 149):
            clock.move_to(T0 + timedelta(seconds=seconds))
            chase(session)
        assert merchant_request(session, w.fo).reminders_sent == 2
        clock.move_to(T0 + timedelta(seconds=151))
        chase(session)
        assert len(notify_keys(session, w.plan)) == 3
        assert session.get_one(CancellationPlan, w.plan.id).escalated_at is not None

    def test_nothing_is_due_before_the_first_slot(
        self, session: Session, clock: time_machine.Coordinates
    ) -> None:
        w = waiting_plan(session, deadline_seconds=3600, reminder_interval_seconds=600, reminder_count=3)
        clock.move_to(T0 + timedelta(seconds=599))
        chase(session)
        assert len(notify_keys(session, w.plan)) == 1
        assert merchant_request(session, w.fo).reminders_sent == 0

    def test_an_answered_request_is_not_chased(
        self, session: Session, clock: time_machine.Coordinates
    ) -> None:
        w = waiting_plan(session, deadline_seconds=3600, reminder_interval_seconds=600, reminder_count=3)
        replies.answer_cancellation(session, w.fo.id, decision="accept", message=None, service_id=None)
        clock.move_to(T0 + timedelta(hours=2))
        chase(session)
        assert len(notify_keys(session, w.plan)) == 1
        plan = session.get_one(CancellationPlan, w.plan.id)
        assert plan.status == PlanStatus.waiting_for_payment
        assert plan.escalated_at is None


class TestDeadlineActions:
    def test_cancel_locally_cancels_directly_and_moves_the_money(
        self, session: Session, clock: time_machine.Coordinates
    ) -> None:
        w = waiting_plan(session, deadline_seconds=60, reminder_count=0, deadline_action="cancel_locally")
        clock.move_to(T0 + timedelta(seconds=61))
        chase(session)
        plan = session.get_one(CancellationPlan, w.plan.id)
        fo = session.get_one(FulfillmentOrder, w.fo.id)
        assert plan.status == PlanStatus.waiting_for_payment
        assert (fo.request_status, fo.status) == (FORequestStatus.closed, FOStatus.cancelled)
        mr = merchant_request(session, w.fo)
        assert (mr.response, mr.responded_at) == (escalation.NO_REPLY, None)
        money = session.scalars(
            select(WorkflowStep).where(WorkflowStep.plan_id == plan.id, WorkflowStep.kind == StepKind.refund)
        ).one()
        assert money.idempotency_key == f"{plan.id}:original_payment:1"
        [action] = events(session, "plan", plan.id, "plan.deadline_action")
        assert action.data["action"] == "cancel_locally"

    def test_reject_withdraws_the_request_and_frees_the_quantity(
        self, session: Session, clock: time_machine.Coordinates
    ) -> None:
        w = waiting_plan(session, deadline_seconds=60, reminder_count=0, deadline_action="reject")
        clock.move_to(T0 + timedelta(seconds=61))
        chase(session)
        plan = session.get_one(CancellationPlan, w.plan.id)
        request = session.get_one(CancellationRequest, plan.request_id)
        fo = session.get_one(FulfillmentOrder, w.fo.id)
        assert plan.status == PlanStatus.rejected
        assert (request.status, request.rejection_code) == (RequestStatus.rejected, "not_cancellable")
        assert (fo.request_status, fo.status) == (FORequestStatus.cancellation_rejected, FOStatus.in_progress)
        assert session.get_one(OrderItem, request.order_item_id).requested_quantity == 0
        assert merchant_request(session, w.fo).response == escalation.NO_REPLY

    @pytest.mark.parametrize("action", ["cancel_locally", "reject"])
    @pytest.mark.parametrize("decision", ["accept", "reject"])
    def test_a_reply_after_the_deadline_action_is_refused_and_flagged(
        self, session: Session, clock: time_machine.Coordinates, action: str, decision: Any
    ) -> None:
        w = waiting_plan(session, deadline_seconds=60, reminder_count=0, deadline_action=action)
        clock.move_to(T0 + timedelta(seconds=61))
        chase(session)
        before = session.get_one(CancellationPlan, w.plan.id).status
        outcome = replies.answer_cancellation(
            session, w.fo.id, decision=decision, message="late", service_id=w.service_id
        )
        # Refused even when it says what the deadline did: never applied, never a silent "duplicate"
        assert outcome.applied is False
        assert outcome.error is not None
        [ignored] = events(session, "fulfillment_order", w.fo.id, "reply.ignored")
        assert ignored.data["flagged"] is True
        assert ignored.data["after_deadline"] is True
        assert ignored.data["decision"] == decision
        assert events(session, "fulfillment_order", w.fo.id, "reply.duplicate") == []
        assert session.get_one(CancellationPlan, w.plan.id).status == before

    @pytest.mark.parametrize(
        ("decision", "plan_status"),
        [("accept", PlanStatus.waiting_for_payment), ("reject", PlanStatus.rejected)],
    )
    def test_a_reply_after_escalation_is_applied_and_flagged(
        self, session: Session, clock: time_machine.Coordinates, decision: Any, plan_status: PlanStatus
    ) -> None:
        w = waiting_plan(session, deadline_seconds=60, reminder_count=0, deadline_action="escalate")
        clock.move_to(T0 + timedelta(seconds=61))
        chase(session)
        outcome = replies.answer_cancellation(
            session, w.fo.id, decision=decision, message="late", service_id=w.service_id
        )
        assert (outcome.applied, outcome.error) == (True, None)
        assert session.get_one(CancellationPlan, w.plan.id).status == plan_status
        [late] = events(session, "plan", w.plan.id, "reply.late")
        assert (late.data["decision"], late.data["applied"], late.data["flagged"]) == (decision, True, True)
        assert w.plan.id not in [e.plan_id for e in escalation.escalations(session)]

    def test_a_timely_reply_is_not_flagged(self, session: Session, clock: time_machine.Coordinates) -> None:
        w = waiting_plan(session, deadline_seconds=60, reminder_count=0)
        clock.move_to(T0 + timedelta(seconds=30))
        chase(session)
        replies.answer_cancellation(session, w.fo.id, decision="accept", message=None, service_id=None)
        assert events(session, "plan", w.plan.id, "reply.late") == []

    def test_the_service_with_the_shortest_deadline_decides(
        self, session: Session, clock: time_machine.Coordinates
    ) -> None:
        # Given an item split over two fulfillment orders held by two services with different policies
        strict = service_payload(deadline_seconds=60, reminder_count=0, deadline_action="reject")
        lax = service_payload(deadline_seconds=3600, reminder_count=0, deadline_action="escalate")
        order = order_payload(service_handle=lax["handle"], quantity=2)
        first = order["fulfillment_orders"][0]
        first["line_items"][0]["quantity"] = 1
        second = {
            **first,
            "id": first["id"] + 1,
            "fulfillment_service": strict["handle"],
            "line_items": [{**first["line_items"][0], "id": first["line_items"][0]["id"] + 1}],
        }
        order["fulfillment_orders"].append(second)
        import_payload(
            session, {**reference_payload(), "fulfillment_services": [strict, lax], "orders": [order]}
        )
        request = intake.submit(
            session,
            {
                "client_request_id": secrets.token_hex(6),
                "order_item": order["items"][0]["id"],
                "reason": 1,
                "quantity": 2,
            },
        ).request
        plan = approval.approve(session, request, actor="t")
        routing.route_step(
            session, session.scalars(select(WorkflowStep).where(WorkflowStep.plan_id == plan.id)).one()
        )
        assert plan.deadline_at == T0 + timedelta(seconds=60)
        # When the shorter deadline passes, its action (reject) applies to the whole plan
        clock.move_to(T0 + timedelta(seconds=61))
        chase(session)
        assert session.get_one(CancellationPlan, plan.id).status == PlanStatus.rejected
        fos = session.scalars(
            select(FulfillmentOrder).where(FulfillmentOrder.cancellation_plan_id == plan.id)
        ).all()
        assert {fo.request_status for fo in fos} == {FORequestStatus.cancellation_rejected}
        assert len(fos) == 2


class TestResolve:
    def _escalated(self, session: Session, clock: time_machine.Coordinates) -> Waiting:
        w = waiting_plan(session, deadline_seconds=3600, reminder_interval_seconds=600, reminder_count=2)
        for seconds in (601, 1201, 3601):
            clock.move_to(T0 + timedelta(seconds=seconds))
            chase(session)
        assert [e.plan_id for e in escalation.escalations(session) if e.plan_id == w.plan.id] == [w.plan.id]
        return w

    def test_listing_shows_the_escalated_request(
        self, session: Session, clock: time_machine.Coordinates
    ) -> None:
        w = self._escalated(session, clock)
        [row] = [e for e in escalation.escalations(session) if e.plan_id == w.plan.id]
        assert row.request_id == w.plan.request_id
        assert row.fulfillment_order_ids == [w.fo.id]
        assert row.reminders_sent == 2
        assert row.sent_at == T0
        assert row.escalated_at == T0 + timedelta(hours=1, seconds=1)

    def test_wait_extends_the_deadline_by_the_policy_then_escalates_again(
        self, session: Session, clock: time_machine.Coordinates
    ) -> None:
        w = self._escalated(session, clock)
        clock.move_to(T0 + timedelta(hours=5))
        plan = escalation.resolve(session, w.plan.request_id, action="wait", actor="alice")
        # The old deadline is long past: a whole policy deadline counted from now
        assert plan.deadline_at == T0 + timedelta(hours=6)
        assert plan.escalated_at is None
        assert merchant_request(session, w.fo).escalated is False
        [resolved] = events(session, "plan", w.plan.id, "plan.escalation_resolved")
        assert (resolved.data["action"], resolved.data["actor"]) == ("wait", "alice")
        clock.move_to(T0 + timedelta(hours=5, minutes=59))
        chase(session)
        assert session.get_one(CancellationPlan, w.plan.id).escalated_at is None
        clock.move_to(T0 + timedelta(hours=6, seconds=1))
        chase(session)
        assert session.get_one(CancellationPlan, w.plan.id).escalated_at is not None
        assert len(events(session, "plan", w.plan.id, "plan.escalated")) == 2

    def test_cancel_locally(self, session: Session, clock: time_machine.Coordinates) -> None:
        w = self._escalated(session, clock)
        plan = escalation.resolve(session, w.plan.request_id, action="cancel_locally", actor="alice")
        assert plan.status == PlanStatus.waiting_for_payment
        assert session.get_one(FulfillmentOrder, w.fo.id).status == FOStatus.cancelled

    def test_reject(self, session: Session, clock: time_machine.Coordinates) -> None:
        w = self._escalated(session, clock)
        plan = escalation.resolve(session, w.plan.request_id, action="reject", actor="alice")
        assert plan.status == PlanStatus.rejected
        request = session.get_one(CancellationRequest, plan.request_id)
        assert request.rejection_code == "staff_rejected"

    def test_a_plan_that_is_not_escalated_cannot_be_resolved(
        self, session: Session, clock: time_machine.Coordinates
    ) -> None:
        w = waiting_plan(session)
        with pytest.raises(InvalidTransition) as refused:
            escalation.resolve(session, w.plan.request_id, action="reject", actor="alice")
        assert refused.value.code == "not_escalated"
        assert session.get_one(CancellationPlan, w.plan.id).status == PlanStatus.confirmation_waiting

    def test_unknown_action_is_invalid(self, session: Session, clock: time_machine.Coordinates) -> None:
        w = self._escalated(session, clock)
        with pytest.raises(Invalid):
            escalation.resolve(session, w.plan.request_id, action="shrug", actor="alice")


class TestOneChaseAtATime:
    def test_a_second_chase_does_nothing_while_the_first_holds_the_lock(
        self, session: Session, clock: time_machine.Coordinates
    ) -> None:
        from cancelflow.db import get_engine

        w = waiting_plan(session, deadline_seconds=60, reminder_count=0)
        clock.move_to(T0 + timedelta(seconds=61))
        with get_engine().connect() as other:
            other.execute(text("SELECT pg_advisory_lock(:k)"), {"k": escalation.CHASE_LOCK_KEY})
            try:
                assert chase(session).locked_out is True
                assert session.get_one(CancellationPlan, w.plan.id).escalated_at is None
            finally:
                other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": escalation.CHASE_LOCK_KEY})
        assert chase(session).locked_out is False
        assert session.get_one(CancellationPlan, w.plan.id).escalated_at is not None


class TestReplyPolicy:
    def test_set_policy_changes_only_what_is_given(self, session: Session) -> None:
        svc = service_payload(deadline_seconds=3600, reminder_count=3)
        import_payload(session, {**reference_payload(), "fulfillment_services": [svc]})
        service = escalation.set_reply_policy(
            session, svc["handle"], deadline_seconds=7200, deadline_action="reject"
        )
        assert (service.reply_deadline_seconds, service.reminder_count, service.deadline_action) == (
            7200,
            3,
            "reject",
        )
        [event] = events(session, "fulfillment_service", service.id, "fulfillment_service.reply_policy")
        assert event.data["before"]["deadline_seconds"] == 3600

    @pytest.mark.parametrize(
        "change",
        [{"deadline_action": "shrug"}, {"deadline_seconds": 0}, {"reminder_count": 101}],
    )
    def test_bad_policy_is_invalid_and_changes_nothing(
        self, session: Session, change: dict[str, Any]
    ) -> None:
        svc = service_payload(deadline_seconds=3600)
        import_payload(session, {**reference_payload(), "fulfillment_services": [svc]})
        with pytest.raises(Invalid):
            escalation.set_reply_policy(session, svc["handle"], **change)
        service = session.scalars(
            select(FulfillmentService).where(FulfillmentService.handle == svc["handle"])
        ).one()
        session.refresh(service)
        assert (service.reply_deadline_seconds, service.deadline_action) == (3600, "escalate")

    def test_unknown_service(self, session: Session) -> None:
        with pytest.raises(NotFound):
            escalation.set_reply_policy(session, "no-such-service", reminder_count=1)


class TestCli:
    @pytest.mark.parametrize(
        ("text_", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("6h", 21600), ("2d", 172800)]
    )
    def test_durations(self, text_: str, seconds: int) -> None:
        from cancelflow.cli.ops import parse_duration

        assert parse_duration(text_) == seconds

    @pytest.mark.parametrize("text_", ["", "6x", "-1", "0", "h"])
    def test_bad_durations(self, text_: str) -> None:
        import typer

        from cancelflow.cli.ops import parse_duration

        with pytest.raises(typer.BadParameter):
            parse_duration(text_)

    def test_set_policy_command(self, database: str) -> None:
        from cancelflow.cli.main import app
        from cancelflow.db import transaction
        from tests.factories import new_service

        service = new_service()
        result = CliRunner().invoke(
            app,
            [
                "services",
                "set-policy",
                service.handle,
                "--deadline",
                "48h",
                "--reminder-interval",
                "6h",
                "--reminders",
                "3",
                "--action",
                "cancel_locally",
            ],
        )
        assert result.exit_code == 0, result.output
        with transaction() as s:
            service = s.scalars(
                select(FulfillmentService).where(FulfillmentService.handle == service.handle)
            ).one()
            assert (
                service.reply_deadline_seconds,
                service.reminder_interval_seconds,
                service.reminder_count,
                service.deadline_action,
            ) == (172800, 21600, 3, "cancel_locally")
        bad = CliRunner().invoke(app, ["services", "set-policy", service.handle, "--action", "shrug"])
        assert bad.exit_code == 1
        assert "deadline_action" in bad.output
