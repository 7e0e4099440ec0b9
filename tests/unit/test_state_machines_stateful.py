"""The state machines judged by use: random sequences of what staff, services, the deadline and the workers do.

Each example builds one order (a fulfillment service holding the goods) and one cancellation request on a real
database (an outer transaction rolled back afterwards), then Hypothesis drives the real services: staff approve
and reject, the service accepts or rejects (and repeats itself), the reply deadline passes, staff resolve an
escalation, workers deliver due steps (and deliver them twice), steps die and are replayed. A model written here,
independently of `cancelflow.models.transitions`, says what each call must do (or that it must be refused and
change nothing); after every call the rows must agree with it and the invariants must hold:

* quantities are never over-cancelled: the item's reservation is the request's quantity while it lives, and
  nothing is cancelled on the fulfillment side for a rejected request;
* money moves at most once, and never for a rejected plan;
* a terminal status stays terminal;
* every status change has its event row: each machine's events chain from its first status to its current one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from cancelflow.api.fulfillment import supported_actions
from cancelflow.config import get_settings
from cancelflow.db import get_engine
from cancelflow.errors import AlreadyHandled, Conflict, InvalidTransition
from cancelflow.models import (
    CancellationPlan,
    CancellationRequest,
    Event,
    FulfillmentOrder,
    FulfillmentOrderLineItem,
    LoyaltyLedgerEntry,
    MoneyTransaction,
    OrderItem,
    WorkflowStep,
)
from cancelflow.models.enums import StepKind
from cancelflow.services import (
    cancellation_requests,
    escalation,
    fulfillment_orders,
    intake,
    locking,
    replay,
    replies,
    steps,
)
from cancelflow.services.importer import import_payload
from tests.factories import order_payload, reference_payload, service_payload
from tests.security.world import HANDLERS

DEADLINE_SECONDS = 60  # short, so the clock jumps past no plan another test left waiting (an hour's deadline)
CHASE_LIMIT = 100_000
# What the model knows, written out here rather than read from the tables under test.
LIVE_REQUEST = {"waiting", "approved", "completed"}
TERMINAL = {
    "request": {"rejected", "completed"},
    "plan": {"rejected", "completed"},
    "step": {"done", "cancelled"},
    "fo": {"cancellation_accepted", "closed"},
}
STAFF_REJECTABLE_PLAN = {"waiting", "confirmation_waiting"}
FAILABLE_PLAN = {"waiting", "confirmation_waiting", "waiting_for_payment"}


@dataclass
class Model:
    """What the rows must say: the request, its plan, the asked fulfillment order, its escalation, its steps."""

    cancel_goods: bool
    policy: str
    request: str = "waiting"
    plan: str | None = None
    failed_from: str | None = None
    fo: str | None = None  # request_status of the fulfillment order the service is asked about
    fo_status: str | None = None
    fo_answered: bool = False  # the service itself answered (a deadline or staff closing it is no answer)
    escalated_at_set: bool = False
    money_moved: bool = False
    steps: dict[int, str] = field(default_factory=dict)

    @property
    def escalated(self) -> bool:
        return self.plan == "confirmation_waiting" and self.escalated_at_set

    def asked(self) -> bool:
        return self.fo == "cancellation_requested"

    def reject_all(self, *, withdraw: bool) -> None:
        """Plan and request rejected: the asked fulfillment order withdrawn, open steps cancelled."""
        if withdraw and self.asked():
            self.fo, self.fo_status = "cancellation_rejected", "in_progress"
        if self.plan is not None:
            self.plan = "rejected"
        self.request = "rejected"
        for step_id, status in self.steps.items():
            if status in {"pending", "dead"}:
                self.steps[step_id] = "cancelled"

    def confirm(self) -> None:
        self.plan = "waiting_for_payment"  # via confirmed, in the same transaction


class CancellationWorkflow(RuleBasedStateMachine):
    """Request, plan, step, fulfillment-order and escalation machines, driven together through the services."""

    def __init__(self) -> None:
        super().__init__()
        self.connection = get_engine().connect()
        self.outer = self.connection.begin()
        self.session = Session(bind=self.connection, join_transaction_mode="create_savepoint")
        self.clock = time_machine.travel(datetime.now(UTC).replace(microsecond=0), tick=False)
        self.traveller = self.clock.start()
        self.model: Model | None = None
        self.seen_terminal: dict[tuple[str, int], str] = {}

    def teardown(self) -> None:
        self.clock.stop()
        self.session.close()
        self.outer.rollback()
        self.connection.close()

    # --- the world --------------------------------------------------------------------------------------

    @initialize(
        cancel_goods=st.booleans(),
        policy=st.sampled_from(["escalate", "cancel_locally", "reject"]),
        quantity=st.sampled_from([1, 2]),
        head_start=st.sampled_from(["none", "approved", "routed", "past_deadline"]),
    )
    def world(self, cancel_goods: bool, policy: str, quantity: int, head_start: str) -> None:
        svc = service_payload(deadline_seconds=DEADLINE_SECONDS, reminder_count=0, deadline_action=policy)
        order = order_payload(service_handle=svc["handle"], quantity=2)
        import_payload(
            self.session, {**reference_payload(), "fulfillment_services": [svc], "orders": [order]}
        )
        self.service_id = svc["id"]
        self.item_id = order["items"][0]["id"]
        self.quantity = quantity
        self.request_id = intake.submit(
            self.session,
            {
                "client_request_id": secrets.token_hex(8),
                "order_item": self.item_id,
                "reason": 1,
                "quantity": quantity,
                "cancellation_type": "cancel" if cancel_goods else "refund",
                "fully_refund_as_loyalty_money": True,  # money moves in-process (the loyalty ledger)
            },
        ).request.id
        self.model = Model(cancel_goods=cancel_goods, policy=policy)
        self.auto_approve = get_settings().approval_rule == "auto"
        self.sync_steps()
        # Most stories are decided late: start some of them approved, routed, or past the reply deadline, through
        # the same moves.
        if head_start != "none":
            self.staff_approves()
        if head_start in {"routed", "past_deadline"}:
            self.workers_catch_up()
        if head_start == "past_deadline":
            self.deadline_passes()

    @property
    def m(self) -> Model:
        assert self.model is not None
        return self.model

    def rows(self) -> tuple[CancellationRequest, CancellationPlan | None, FulfillmentOrder | None]:
        self.session.flush()
        self.session.expire_all()
        request = self.session.get_one(CancellationRequest, self.request_id)
        plan = locking.plan_of(self.session, self.request_id)
        fo = None
        if plan is not None:
            fo = self.session.scalars(
                select(FulfillmentOrder)
                .where(FulfillmentOrder.cancellation_plan_id == plan.id)
                .order_by(FulfillmentOrder.id)
            ).first()
        return request, plan, fo

    def step_rows(self) -> list[WorkflowStep]:
        return list(
            self.session.scalars(
                select(WorkflowStep)
                .where(WorkflowStep.request_id == self.request_id)
                .order_by(WorkflowStep.id)
            )
        )

    def sync_steps(self) -> None:
        """Steps the services made since: new steps are pending, whatever made them."""
        for step in self.step_rows():
            if step.id not in self.m.steps:
                assert step.status.value == "pending", (
                    f"new step {step.id} ({step.kind.value}) is {step.status}"
                )
                self.m.steps[step.id] = "pending"

    def refused(self, call: Any, *errors: type[Exception]) -> None:
        """The call must raise one of `errors` and change nothing."""
        before = self.snapshot()
        with pytest.raises(errors):
            call()
        assert self.snapshot() == before

    def snapshot(self) -> tuple[object, ...]:
        request, plan, fo = self.rows()
        return (
            request.status,
            request.version,
            plan and (plan.status, plan.version, plan.escalated_at),
            fo and (fo.request_status, fo.status, fo.version),
            tuple((s.id, s.status) for s in self.step_rows()),
            self.session.scalar(select(func.count()).select_from(Event)),
        )

    # --- staff ----------------------------------------------------------------------------------------------

    @precondition(lambda self: self.model is not None)
    @rule()
    def staff_approves(self) -> None:
        def approve() -> None:
            cancellation_requests.update_request(
                self.session, self.request_id, {"status": "approved"}, actor="staff", channel_id=None
            )

        if self.m.request in {"rejected", "completed"}:
            event("approve refused")
            self.refused(approve, InvalidTransition)
            return
        approve()
        if self.m.request == "waiting":
            self.m.request, self.m.plan = "approved", "waiting"
        self.sync_steps()

    @precondition(lambda self: self.model is not None)
    @rule(hesitates=st.integers(0, 2))
    def staff_rejects(self, hesitates: int) -> None:
        if hesitates:  # rejecting ends the story: let the other moves happen first, most of the time
            return

        def reject() -> None:
            cancellation_requests.reject(self.session, self.request_id, actor="staff", channel_id=None)

        m = self.m
        plan_ok = (
            m.plan is None
            or m.plan in STAFF_REJECTABLE_PLAN
            or (m.plan == "failed" and m.failed_from in STAFF_REJECTABLE_PLAN)
        )
        if m.request not in {"waiting", "approved"} or not plan_ok:
            event(f"staff reject refused (plan {m.plan})")
            self.refused(reject, InvalidTransition)
            return
        event(f"staff reject of plan {m.plan}")
        reject()
        m.reject_all(withdraw=True)

    @precondition(lambda self: self.model is not None and self.model.plan is not None)
    @rule(action=st.sampled_from(["wait", "cancel_locally", "reject"]))
    def staff_resolves(self, action: str) -> None:
        def resolve() -> None:
            escalation.resolve(self.session, self.request_id, action=action, actor="staff")

        m = self.m
        if not (m.escalated and m.asked()):
            self.refused(resolve, InvalidTransition)
            return
        event(f"resolve {action}")
        resolve()
        self.apply_deadline_action(action)
        self.sync_steps()

    def apply_deadline_action(self, action: str) -> None:
        m = self.m
        if action == "wait":
            m.escalated_at_set = False
        elif action == "escalate":
            m.escalated_at_set = True
        elif action == "cancel_locally":
            m.fo, m.fo_status = "closed", "cancelled"
            m.confirm()
        else:
            m.reject_all(withdraw=True)

    # --- the fulfillment service -------------------------------------------------------------------------

    @precondition(lambda self: self.model is not None and self.model.fo is not None)
    @rule(decision=st.sampled_from(["accept", "reject"]), repeat=st.booleans())
    def service_replies(self, decision: str, repeat: bool) -> None:
        for _ in range(2 if repeat else 1):  # a service whose first answer was lost sends it again
            self.reply(decision)

    def reply(self, decision: str) -> None:
        m = self.m
        _, plan, fo = self.rows()
        assert fo is not None
        assert plan is not None
        outcome, done = answer(self.session, fo.id, decision, self.service_id)
        event(f"reply {decision} to {m.fo} (plan {m.plan})")
        if m.asked():
            assert outcome.applied
            assert outcome.error is None
            m.fo, m.fo_answered = done, True
            m.fo_status = "cancelled" if decision == "accept" else "in_progress"
            if m.plan == "confirmation_waiting":
                if decision == "accept":
                    m.confirm()
                else:
                    m.reject_all(withdraw=False)
        elif m.fo == done and m.fo_answered:
            assert not outcome.applied
            assert outcome.error is None
        else:
            assert not outcome.applied
            assert outcome.error is not None
        self.sync_steps()

    # --- time -----------------------------------------------------------------------------------------------

    @precondition(lambda self: self.model is not None)
    @rule()
    def deadline_passes(self) -> None:
        self.traveller.shift(timedelta(seconds=DEADLINE_SECONDS + 1))
        escalation.chase(self.session, limit=CHASE_LIMIT)
        m = self.m
        if m.plan == "confirmation_waiting" and not m.escalated_at_set and m.asked():
            event(f"deadline {m.policy}")
            self.apply_deadline_action(m.policy)
        self.sync_steps()

    # --- workers ------------------------------------------------------------------------------------------

    def pending(self, *, with_plan: bool) -> list[WorkflowStep]:
        return [
            s
            for s in self.step_rows()
            if s.status.value == "pending"
            and s.kind != StepKind.notify  # would call the service over HTTP
            and (s.plan_id is not None or not with_plan)
        ]

    @precondition(lambda self: self.model is not None)
    @rule(data=st.data())
    def worker_delivers(self, data: st.DataObject) -> None:
        due = self.pending(with_plan=False)
        if due:
            self.deliver(data.draw(st.sampled_from(due), label="step"))

    @precondition(lambda self: self.model is not None)
    @rule()
    def workers_catch_up(self) -> None:
        """Every due step runs, oldest first, and the steps they make after them (a sweep and its workers)."""
        while due := self.pending(with_plan=False):
            self.deliver(due[0])

    def deliver(self, step: WorkflowStep) -> None:
        kind, m = step.kind, self.m
        event(f"deliver {kind.value} (plan {m.plan})")
        claimed = steps.claim(self.session, step.id, task=steps.TASK_FOR_KIND[kind])
        HANDLERS[kind](self.session, claimed)
        m.steps[step.id] = "done"
        if kind == StepKind.validate:
            if self.auto_approve and m.request == "waiting":
                m.request, m.plan = "approved", "waiting"
        elif kind == StepKind.route:
            if m.plan == "waiting":
                if m.cancel_goods:
                    m.plan, m.fo, m.fo_status = (
                        "confirmation_waiting",
                        "cancellation_requested",
                        "in_progress",
                    )
                else:
                    m.confirm()
        elif kind == StepKind.loyalty_credit:
            if m.plan == "waiting_for_payment":
                assert not m.money_moved, "a second money step ran for the plan"
                m.money_moved = True
        elif kind == StepKind.close and m.plan == "waiting_for_payment":
            m.plan = "completed"
            if m.request == "approved":
                m.request = "completed"
        self.sync_steps()

    @precondition(lambda self: self.model is not None and self.model.steps)
    @rule(data=st.data())
    def duplicate_delivery(self, data: st.DataObject) -> None:
        """A message delivered again after its step finished (or died, or was cancelled) runs nothing."""
        over = [s for s in self.step_rows() if s.status.value != "pending"]
        if not over:
            return
        step = data.draw(st.sampled_from(over), label="step")
        self.refused(
            lambda: steps.claim(self.session, step.id, task=steps.TASK_FOR_KIND[step.kind]), AlreadyHandled
        )

    @precondition(lambda self: self.model is not None and self.model.plan is not None)
    @rule(data=st.data())
    def step_dies(self, data: st.DataObject) -> None:
        due = self.pending(with_plan=True)
        if not due:
            return
        step = data.draw(st.sampled_from(due), label="step")
        steps.record_failure(self.session, step.id, "PermanentError: drawn", permanent=True)
        m = self.m
        event(f"{step.kind.value} step dies (plan {m.plan})")
        m.steps[step.id] = "dead"
        if m.plan in FAILABLE_PLAN:
            m.failed_from, m.plan = m.plan, "failed"

    @precondition(lambda self: self.model is not None and self.model.plan is not None)
    @rule()
    def operator_replays(self) -> None:
        m = self.m
        _, plan, _ = self.rows()
        assert plan is not None
        dead = [i for i, s in m.steps.items() if s == "dead"]

        def replay_plan() -> None:
            replay.replay_plan(self.session, plan.id, actor="operator")

        if m.plan in {"completed", "rejected"} or (not dead and m.plan != "failed"):
            self.refused(replay_plan, Conflict)
            return
        event(f"replay plan {m.plan} from {m.failed_from}")
        replay_plan()
        if m.plan == "failed":
            m.plan, m.failed_from = m.failed_from, None
        for step_id in dead:
            m.steps[step_id] = "pending"

    # --- invariants -----------------------------------------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        """Read the rows once after every move, then check each invariant on them."""
        if self.model is None:
            return
        rows = Rows.read(self)
        self.rows_agree_with_the_model(rows)
        self.quantities_are_never_over_cancelled(rows)
        self.money_moves_once_and_never_for_a_rejected_plan(rows)
        self.terminal_states_stay_terminal(rows)
        self.every_move_has_its_event_row(rows)

    def rows_agree_with_the_model(self, rows: Rows) -> None:
        m, plan, fo = self.m, rows.plan, rows.fo
        assert rows.request.status.value == m.request
        assert (plan.status.value if plan else None) == m.plan
        if m.fo is not None:
            assert fo is not None
            assert (fo.request_status.value, fo.status.value) == (m.fo, m.fo_status)
        if plan is not None:
            assert (
                plan.status.value == "confirmation_waiting" and plan.escalated_at is not None
            ) == m.escalated
        assert {s.id: s.status.value for s in rows.steps} == m.steps

    def quantities_are_never_over_cancelled(self, rows: Rows) -> None:
        request, item = rows.request, rows.item
        assert 0 <= item.requested_quantity <= item.quantity
        assert item.requested_quantity == (request.quantity if request.status.value in LIVE_REQUEST else 0)
        assert rows.cancelled <= request.quantity
        if request.status.value == "rejected":
            assert rows.cancelled == 0

    def money_moves_once_and_never_for_a_rejected_plan(self, rows: Rows) -> None:
        assert rows.moved == rows.credited == (1 if self.m.money_moved else 0)
        if rows.moved:
            event("money moved")
        if rows.plan is not None and rows.plan.status.value == "rejected":
            assert rows.moved == 0

    def terminal_states_stay_terminal(self, rows: Rows) -> None:
        current: list[tuple[str, int, str]] = [("request", rows.request.id, rows.request.status.value)]
        if rows.plan is not None:
            current.append(("plan", rows.plan.id, rows.plan.status.value))
        if rows.fo is not None:
            current.append(("fo", rows.fo.id, rows.fo.request_status.value))
        current += [("step", s.id, s.status.value) for s in rows.steps]
        for machine, ident, status in current:
            seen = self.seen_terminal.get((machine, ident))
            if seen is not None:
                event(f"{machine} stays {seen}")
                assert status == seen, f"{machine} {ident} left terminal {seen} for {status}"
            elif status in TERMINAL[machine]:
                self.seen_terminal[(machine, ident)] = status

    def every_move_has_its_event_row(self, rows: Rows) -> None:
        request, plan, fo = rows.request, rows.plan, rows.fo
        assert_chain(rows.moves("request", request.id), "waiting", request.status.value, "request")
        if plan is not None:
            assert_chain(rows.moves("plan", plan.id, escalation=False), "waiting", plan.status.value, "plan")
            state = "escalated" if plan.escalated_at is not None else "none"
            assert_chain(rows.moves("plan", plan.id, escalation=True), "none", state, "plan escalation")
        if fo is not None:
            # As imported (or split off an imported one): the service had accepted the work and started it.
            now = f"{fo.request_status.value}/{fo.status.value}"
            assert_chain(rows.moves("fulfillment_order", fo.id), "accepted/in_progress", now, "fo")
        for step in rows.steps:
            assert_chain(rows.moves("step", step.id), "pending", step.status.value, f"step {step.id}")


@dataclass
class Rows:
    """What the database says after a move, read in a handful of queries."""

    request: CancellationRequest
    plan: CancellationPlan | None
    fo: FulfillmentOrder | None
    steps: list[WorkflowStep]
    item: OrderItem
    cancelled: int
    moved: int
    credited: int
    events: list[Any]

    @classmethod
    def read(cls, machine: CancellationWorkflow) -> Rows:
        session = machine.session
        request, plan, fo = machine.rows()
        step_rows = machine.step_rows()
        plan_id = plan.id if plan is not None else -1
        cancelled, moved, credited = session.execute(
            select(
                select(func.coalesce(func.sum(FulfillmentOrderLineItem.quantity), 0))
                .join(FulfillmentOrder, FulfillmentOrder.id == FulfillmentOrderLineItem.fulfillment_order_id)
                .where(
                    FulfillmentOrder.cancellation_plan_id == plan_id, FulfillmentOrder.status == "cancelled"
                )
                .scalar_subquery(),
                select(func.count())
                .select_from(MoneyTransaction)
                .where(MoneyTransaction.plan_id == plan_id)
                .scalar_subquery(),
                select(func.count())
                .select_from(LoyaltyLedgerEntry)
                .where(LoyaltyLedgerEntry.plan_id == plan_id)
                .scalar_subquery(),
            )
        ).one()
        keys = [("request", request.id), ("plan", plan_id), ("fulfillment_order", fo.id if fo else -1)]
        keys += [("step", s.id) for s in step_rows]
        events = session.execute(
            select(Event.entity, Event.entity_id, Event.from_status, Event.to_status, Event.kind)
            .where(tuple_(Event.entity, Event.entity_id).in_(keys), Event.from_status.is_not(None))
            .order_by(Event.id)
        ).all()
        item = session.get_one(OrderItem, machine.item_id)
        return cls(request, plan, fo, step_rows, item, cancelled, moved, credited, list(events))

    def moves(self, entity: str, ident: int, *, escalation: bool | None = None) -> list[tuple[str, str]]:
        return [
            (e.from_status, e.to_status)
            for e in self.events
            if (e.entity, e.entity_id) == (entity, ident)
            and (escalation is None or e.kind.startswith("plan.escalat") == escalation)
        ]


def answer(
    session: Session, fo_id: int, decision: str, service_id: int | None
) -> tuple[replies.ReplyOutcome, str]:
    """The service's reply, and the request status it asks for."""
    outcome = replies.answer_cancellation(
        session,
        fo_id,
        decision="accept" if decision == "accept" else "reject",
        message=None,
        service_id=service_id,
    )
    return outcome, "cancellation_accepted" if decision == "accept" else "cancellation_rejected"


def assert_chain(moves: list[tuple[str, str]], first: str, last: str, what: str) -> None:
    """The events lead, move by move, from `first` to `last` (no move without its event row)."""
    at = first
    for source, target in moves:
        assert source == at, f"{what}: an event moves from {source} while the row was {at}: {moves}"
        at = target
    assert at == last, f"{what}: the events end at {at}, the row is {last}: {moves}"


class FulfillmentOrderRequests(RuleBasedStateMachine):
    """Shopify's cancellation-request machine on one fulfillment order, outside any plan: the merchant sends (and
    sends again), the service accepts or rejects (and repeats itself). `supported_actions` must offer
    `request_cancellation` exactly when sending succeeds, and a direct cancel exactly when no consent is needed."""

    def __init__(self) -> None:
        super().__init__()
        self.connection = get_engine().connect()
        self.outer = self.connection.begin()
        self.session = Session(bind=self.connection, join_transaction_mode="create_savepoint")
        self.fo_id: int | None = None
        self.answered = False
        self.seen_terminal: str | None = None

    def teardown(self) -> None:
        self.session.close()
        self.outer.rollback()
        self.connection.close()

    @initialize(
        start=st.sampled_from(
            [("accepted", "in_progress"), ("submitted", "open"), ("unsubmitted", "open"), (None, "open")]
        )
    )
    def world(self, start: tuple[str | None, str]) -> None:
        request_status, status = start
        svc = service_payload()
        order = order_payload(
            service_handle=svc["handle"] if request_status else None,
            request_status=request_status or "unsubmitted",
            fo_status=status,
        )
        import_payload(
            self.session, {**reference_payload(), "fulfillment_services": [svc], "orders": [order]}
        )
        self.service_id = svc["id"] if request_status else None
        self.fo_id = order["fulfillment_orders"][0]["id"]
        self.model = (request_status or "unsubmitted", status)
        self.first = f"{self.model[0]}/{self.model[1]}"

    def fo(self) -> FulfillmentOrder:
        assert self.fo_id is not None
        self.session.flush()
        self.session.expire_all()
        return self.session.get_one(FulfillmentOrder, self.fo_id)

    @precondition(lambda self: self.fo_id is not None)
    @rule()
    def merchant_sends(self) -> None:
        request_status, status = self.model
        sendable = (
            self.service_id is not None
            and status == "in_progress"
            and request_status in {"accepted", "cancellation_rejected"}
        )
        fo = self.fo()
        if not sendable:
            before = (fo.request_status, fo.status, fo.version)
            with pytest.raises(InvalidTransition):
                fulfillment_orders.request_cancellation(self.session, fo, message="again?")
            fo = self.fo()
            assert (fo.request_status, fo.status, fo.version) == before
            return
        event(f"send from {request_status}")
        fulfillment_orders.request_cancellation(self.session, fo, message="please")
        self.model, self.answered = ("cancellation_requested", status), False

    @precondition(lambda self: self.fo_id is not None and self.service_id is not None)
    @rule(decision=st.sampled_from(["accept", "reject"]), repeat=st.booleans())
    def service_replies(self, decision: str, repeat: bool) -> None:
        assert self.fo_id is not None
        for _ in range(2 if repeat else 1):
            outcome, done = answer(self.session, self.fo_id, decision, self.service_id)
            event(f"reply {decision} to {self.model[0]}")
            if self.model[0] == "cancellation_requested":
                assert outcome.applied
                self.model = (done, "cancelled" if decision == "accept" else "in_progress")
                self.answered = True
            else:
                assert not outcome.applied
                duplicate = self.model[0] == done and self.answered
                assert (outcome.error is None) == duplicate

    @invariant()
    def actions_agree_with_what_succeeds(self) -> None:
        if self.fo_id is None:
            return
        fo = self.fo()
        assert (fo.request_status.value, fo.status.value) == self.model
        request_status, status = self.model
        actions = supported_actions(fo)
        sendable = (
            self.service_id is not None
            and status == "in_progress"
            and request_status in {"accepted", "cancellation_rejected"}
        )
        assert ("request_cancellation" in actions) == sendable
        assert ("cancel_fulfillment_order" in actions) == (
            status not in {"cancelled", "closed"} and not sendable
        )
        if self.seen_terminal is not None:
            assert request_status == self.seen_terminal
        elif request_status in TERMINAL["fo"]:
            self.seen_terminal = request_status
        moves = self.session.execute(
            select(Event.from_status, Event.to_status)
            .where(
                Event.entity == "fulfillment_order",
                Event.entity_id == fo.id,
                Event.from_status.is_not(None),
            )
            .order_by(Event.id)
        ).all()
        assert_chain(
            [(m.from_status, m.to_status) for m in moves], self.first, f"{request_status}/{status}", "fo"
        )


# Each example costs a few hundred statements: 40 sequences of up to 20 moves take 7-20 s on 2 cores, a fresh draw
# on every run (the sequences are not derandomised), so the runs add up to more than any one of them. Shrinking
# is left out: on a real database it runs to Hypothesis' five-minute cap (and into the test timeout); a failure
# prints its whole sequence of moves, at most 20, instead.
MACHINE_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=20,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_request_plan_step_fulfillment_order_and_escalation_machines(database: str) -> None:
    run_state_machine_as_test(CancellationWorkflow, settings=MACHINE_SETTINGS)


def test_fulfillment_order_requests_and_their_supported_actions(database: str) -> None:
    run_state_machine_as_test(
        FulfillmentOrderRequests, settings=settings(MACHINE_SETTINGS, max_examples=40, stateful_step_count=12)
    )
