"""A world holding a workflow step of every kind in every status, built in-process on real PostgreSQL.

Requests are driven through their steps the way the worker runs them (claim, then the step's handler), with
the job sender captured, and stopped with the step of a given kind pending. Copies of those requests then
have that step put in each other status. Money moves only where a plan was legitimately paid (loyalty
credits: no gateway is needed), and `World.planned` records what each plan must have paid.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update

from cancelflow.db import transaction
from cancelflow.models import (
    BulkJob,
    CancellationPlan,
    CancellationRequest,
    Event,
    ExportJob,
    FulfillmentOrder,
    JobStatus,
    LoyaltyLedgerEntry,
    MoneyTransaction,
    WorkflowStep,
)
from cancelflow.models.enums import StepKind, StepStatus
from cancelflow.services import after_commit, approval, intake, replies, routing, settlement, steps
from tests.factories import VALID_IBAN, new_order, new_service

# Where each flow stops (the step left pending) and how its money is refunded.
TARGET_MESSAGE: dict[str, dict[str, Any]] = {
    "loyalty_money": {"fully_refund_as_loyalty_money": True},
    "original_payment": {},
    "bank_transfer": {"iban": VALID_IBAN, "holder_name": "Bob Norman"},
}
MONEY_KIND = {
    "loyalty_money": StepKind.loyalty_credit,
    "original_payment": StepKind.refund,
    "bank_transfer": StepKind.bank_transfer,
}
# The service call each step's task makes (the notification's HTTP call is left out below).
HANDLERS = {
    StepKind.validate: approval.validate_step,
    StepKind.route: routing.route_step,
    StepKind.refund: settlement.money_step,
    StepKind.bank_transfer: settlement.money_step,
    StepKind.loyalty_credit: settlement.money_step,
    StepKind.close: settlement.close_step,
}
STOPS: tuple[tuple[StepKind, str], ...] = (
    (StepKind.validate, "loyalty_money"),
    (StepKind.route, "loyalty_money"),
    (StepKind.notify, "loyalty_money"),
    (StepKind.loyalty_credit, "loyalty_money"),
    (StepKind.refund, "original_payment"),
    (StepKind.bank_transfer, "bank_transfer"),
    (StepKind.close, "loyalty_money"),
)
STATUSES = (StepStatus.pending, StepStatus.done, StepStatus.dead, StepStatus.cancelled)
PARKED = timedelta(days=365)  # a pending step of the world is never due while a test runs


@dataclass
class World:
    request_ids: list[int] = field(default_factory=list)
    # step id -> (kind, status)
    steps: dict[int, tuple[StepKind, StepStatus]] = field(default_factory=dict)
    # plan id -> [(idempotency key, amount)] of the money it was legitimately paid
    planned: dict[int, list[tuple[str, Decimal]]] = field(default_factory=dict)
    bulk_job: str = ""
    export_job: str = ""
    sent: list[after_commit.Send] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"World({len(self.request_ids)} requests, {len(self.steps)} steps)"


@dataclass
class _Flow:
    sent: list[after_commit.Send]
    request_id: int = 0

    def asked(self, kind: StepKind) -> int:
        task = steps.TASK_FOR_KIND[kind]
        found = [s for s in self.sent if s.task == task]
        assert found, f"no {task} asked for; sent {self.sent}"
        self.sent.clear()
        return int(found[-1].args[0])

    def run(self, kind: StepKind, handler: Any) -> int:
        step_id = self.asked(kind)
        with transaction() as session:
            handler(session, steps.claim(session, step_id, task=steps.TASK_FOR_KIND[kind]))
        return step_id


def _flow(sent: list[after_commit.Send], service: str, stop: StepKind | None, target: str) -> _Flow:
    """Drive one request until the step of kind `stop` is asked for (None: to the end)."""
    method = "cash_on_delivery" if target == "bank_transfer" else "card"
    order = new_order(service_handle=service, quantity=1, unit_price="19.90", method=method)
    flow = _Flow(sent)
    sent.clear()
    message = {"client_request_id": secrets.token_hex(8), "order_item": order.item_id, "reason": 1}
    message.update(TARGET_MESSAGE[target])
    with transaction() as session:
        flow.request_id = intake.submit(session, message).request.id
    money_kind = MONEY_KIND[target]
    for kind in (StepKind.validate, StepKind.route, StepKind.notify, money_kind, StepKind.close):
        if kind == stop:
            return flow
        if kind == StepKind.notify:
            # The notification's HTTP call is left out; the service then accepts through the API's service call.
            notify_id = flow.run(kind, lambda session, step: steps.finish(session, step, {}))
            with transaction() as session:
                fo_id = session.scalar(
                    select(WorkflowStep.fulfillment_order_id).where(WorkflowStep.id == notify_id)
                )
                assert fo_id is not None
                replies.answer_cancellation(session, fo_id, decision="accept", message=None, service_id=None)
            continue
        flow.run(kind, HANDLERS[kind])
    return flow


def build(sent: list[after_commit.Send]) -> World:
    """Every step kind in every status, plus a bulk job and an export job."""
    service = new_service(secret=secrets.token_hex(8))
    world = World(sent=sent)
    for status in STATUSES:
        for stop, target in STOPS:
            flow = _flow(sent, service.handle, stop, target)
            step_id = flow.asked(stop)
            world.request_ids.append(flow.request_id)
            if status != StepStatus.pending:
                with transaction() as session:
                    session.execute(
                        update(WorkflowStep).where(WorkflowStep.id == step_id).values(status=status)
                    )
    # One request paid and closed the ordinary way.
    world.request_ids.append(_flow(sent, service.handle, None, "loyalty_money").request_id)
    sent.clear()
    with transaction() as session:
        # Pending steps are parked far ahead: the world lives for the whole session, and the sweeper of a
        # real worker another test starts on this database would otherwise run them (and move money).
        session.execute(
            update(WorkflowStep)
            .where(
                WorkflowStep.request_id.in_(world.request_ids),
                WorkflowStep.status == StepStatus.pending,
            )
            .values(next_attempt_at=datetime.now(UTC) + PARKED)
        )
        for step in session.scalars(
            select(WorkflowStep).where(WorkflowStep.request_id.in_(world.request_ids))
        ):
            world.steps[step.id] = (step.kind, step.status)
        for row in session.execute(
            select(MoneyTransaction.plan_id, MoneyTransaction.idempotency_key, MoneyTransaction.amount)
            .join(CancellationPlan, CancellationPlan.id == MoneyTransaction.plan_id)
            .where(CancellationPlan.request_id.in_(world.request_ids))
        ):
            world.planned.setdefault(row.plan_id, []).append((row.idempotency_key, row.amount))
        bulk = BulkJob(id=uuid.uuid4(), kind="tags.bulk_add", status=JobStatus.pending, params={"op": "add"})
        export = ExportJob(id=uuid.uuid4(), format="csv", status=JobStatus.pending, params={})
        session.add_all([bulk, export])
        session.flush()
        world.bulk_job, world.export_job = str(bulk.id), str(export.id)
    kinds_and_statuses = set(world.steps.values())
    assert kinds_and_statuses == {(k, s) for k in StepKind for s in STATUSES}, kinds_and_statuses
    return world


def snapshot(world: World) -> dict[str, Any]:
    """Everything a task could change for the world's requests: statuses, attempts, versions, money, events."""
    ids = world.request_ids
    with transaction() as session:
        plans = select(CancellationPlan.id).where(CancellationPlan.request_id.in_(ids))
        return {
            "steps": session.execute(
                select(
                    WorkflowStep.id,
                    WorkflowStep.status,
                    WorkflowStep.attempt,
                    WorkflowStep.version,
                    WorkflowStep.next_attempt_at,
                    WorkflowStep.last_error,
                )
                .where(WorkflowStep.request_id.in_(ids))
                .order_by(WorkflowStep.id)
            ).all(),
            "requests": session.execute(
                select(CancellationRequest.id, CancellationRequest.status, CancellationRequest.version)
                .where(CancellationRequest.id.in_(ids))
                .order_by(CancellationRequest.id)
            ).all(),
            "plans": session.execute(
                select(CancellationPlan.id, CancellationPlan.status, CancellationPlan.version)
                .where(CancellationPlan.request_id.in_(ids))
                .order_by(CancellationPlan.id)
            ).all(),
            "fulfillment_orders": session.execute(
                select(FulfillmentOrder.id, FulfillmentOrder.status, FulfillmentOrder.request_status)
                .where(FulfillmentOrder.cancellation_plan_id.in_(plans))
                .order_by(FulfillmentOrder.id)
            ).all(),
            "money": money(world),
            "ledger": session.execute(
                select(
                    LoyaltyLedgerEntry.plan_id, LoyaltyLedgerEntry.idempotency_key, LoyaltyLedgerEntry.amount
                )
                .where(LoyaltyLedgerEntry.plan_id.in_(plans))
                .order_by(LoyaltyLedgerEntry.id)
            ).all(),
            "events": session.scalar(select(func.count()).select_from(Event)),
            "jobs": session.execute(
                select(BulkJob.status, BulkJob.done, BulkJob.error).where(
                    BulkJob.id == uuid.UUID(world.bulk_job)
                )
            ).all()
            + session.execute(
                select(ExportJob.status, ExportJob.done, ExportJob.error).where(
                    ExportJob.id == uuid.UUID(world.export_job)
                )
            ).all(),
        }


def money(world: World) -> dict[int, list[tuple[str, Decimal]]]:
    """plan id -> [(idempotency key, amount)] of every money row of the world's plans."""
    with transaction() as session:
        rows = session.execute(
            select(MoneyTransaction.plan_id, MoneyTransaction.idempotency_key, MoneyTransaction.amount)
            .join(CancellationPlan, CancellationPlan.id == MoneyTransaction.plan_id)
            .where(CancellationPlan.request_id.in_(world.request_ids))
            .order_by(MoneyTransaction.id)
        ).all()
    found: dict[int, list[tuple[str, Decimal]]] = {}
    for plan_id, key, amount in rows:
        found.setdefault(plan_id, []).append((key, amount))
    return found
