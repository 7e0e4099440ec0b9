"""Routing decides on the fulfillment order's lines as they are once it holds the lock, not as they were."""

from __future__ import annotations

import secrets
import threading
import time

from sqlalchemy import delete, select, text

from cancelflow.db import new_session, transaction
from cancelflow.models import FulfillmentOrder, FulfillmentOrderLineItem, WorkflowStep
from cancelflow.models.enums import StepKind
from cancelflow.services import approval, intake, routing, steps
from tests.factories import load, order_payload, service_payload


def _waiting_for_a_lock(pid: int) -> bool:
    with transaction() as session:
        return bool(
            session.scalar(
                text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": pid},
            )
        )


def test_a_line_added_while_route_waits_for_the_lock_is_not_cancelled(database: str) -> None:
    # Given an open fulfillment order held by a service, with one line (item A) of a two-item order
    svc = service_payload()
    order = order_payload(service_handle=svc["handle"], quantity=1, items=2)
    load({"fulfillment_services": [svc], "orders": [order]})
    item_a, item_b = (i["id"] for i in order["items"])
    fo_id = order["fulfillment_orders"][0]["id"]
    line_b = next(li for li in order["fulfillment_orders"][0]["line_items"] if li["order_item"] == item_b)
    with transaction() as session:
        session.execute(delete(FulfillmentOrderLineItem).where(FulfillmentOrderLineItem.id == line_b["id"]))
        request = intake.submit(
            session, {"client_request_id": secrets.token_hex(6), "order_item": item_a, "reason": 1}
        ).request
        plan = approval.approve(session, request, actor="test")
        route_id = session.scalars(
            select(WorkflowStep.id).where(
                WorkflowStep.plan_id == plan.id, WorkflowStep.kind == StepKind.route
            )
        ).one()

    # And an import that is adding item B's line to it, not yet committed (it holds the row's key-share lock)
    importer = new_session()
    importer.add(
        FulfillmentOrderLineItem(
            id=line_b["id"],
            fulfillment_order_id=fo_id,
            order_item_id=item_b,
            quantity=1,
            fulfillable_quantity=1,
        )
    )
    importer.flush()

    # When routing runs meanwhile (it waits for that lock) and the import then commits
    pid: list[int] = []
    failure: list[BaseException] = []

    def route() -> None:
        try:
            with transaction() as session:
                pid.append(int(session.scalar(text("SELECT pg_backend_pid()")) or 0))
                routing.route_step(session, steps.claim(session, route_id, task="cancellations.route"))
        except BaseException as exc:  # reported by the assertion below
            failure.append(exc)

    thread = threading.Thread(target=route)
    thread.start()
    deadline = time.monotonic() + 10
    while not (pid and _waiting_for_a_lock(pid[0])):
        assert time.monotonic() < deadline, "routing never waited for the fulfillment order's lock"
        time.sleep(0.02)
    importer.commit()
    importer.close()
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert not failure, failure

    # Then only item A's quantity went to a new fulfillment order; item B stays on the original, open
    with transaction() as session:
        original = session.get_one(FulfillmentOrder, fo_id)
        asked = session.scalars(
            select(FulfillmentOrder).where(FulfillmentOrder.cancellation_plan_id == plan.id)
        ).all()
        assert [fo.split_from_id for fo in asked] == [fo_id]
        assert original.cancellation_plan_id is None
        assert original.request_status.value == "accepted"
        lines = session.scalars(
            select(FulfillmentOrderLineItem.order_item_id).where(
                FulfillmentOrderLineItem.fulfillment_order_id == fo_id, FulfillmentOrderLineItem.quantity > 0
            )
        ).all()
        assert lines == [item_b]
