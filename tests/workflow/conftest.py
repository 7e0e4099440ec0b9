"""A running stack (real worker, beat, API, sandboxes) shared by the workflow tests of a module."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.factories import load, order_payload, service_payload
from tests.harness import Stack, clean_workdir, running, wait_for


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, database: str) -> Iterator[Stack]:
    """The processes' logs stay under test-output/ for whoever debugs a failure."""
    with running(Stack(clean_workdir(f"stack-{request.module.__name__.rsplit('.', 1)[-1]}"))) as stack:
        yield stack


@dataclass
class Service:
    handle: str
    token: str
    secret: str


def make_service(stack: Stack, *, policy: str = "accept", **kwargs: Any) -> Service:
    """A fulfillment service imported into cancelflow, with its token, answering per `policy` in the sandbox."""
    from cancelflow.db import transaction
    from cancelflow.services.tokens import create_token

    secret = secrets.token_hex(16)
    payload = service_payload(
        secret=secret,
        callback_url="http://127.0.0.1:9/placeholder",
        **{
            k: v
            for k, v in kwargs.items()
            if k in {"deadline_seconds", "deadline_action", "reminder_interval_seconds", "reminder_count"}
        },
    )
    handle = payload["handle"]
    token_key = secrets.token_hex(20)
    payload["callback_url"] = stack.add_service(
        handle,
        token=token_key,
        secret=secret,
        policy=policy,
        **{k: v for k, v in kwargs.items() if k in {"delay_seconds", "fail_first", "message"}},
    )
    load({"fulfillment_services": [payload]})
    with transaction() as session:
        from cancelflow.services.tokens import ensure_token

        ensure_token(
            session,
            name=f"svc-{handle}",
            kind="fulfillment_service",
            key=token_key,
            fulfillment_service_handle=handle,
        )
    _ = create_token  # tokens for staff are made where a test needs them
    return Service(handle, token_key, secret)


def make_order(service: Service | None, **kwargs: Any) -> dict[str, Any]:
    return make_orders([(service, kwargs)])[0]


def make_orders(specs: list[tuple[Service | None, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Orders imported in one load: a test that needs hundreds spends milliseconds, not one import each."""
    orders = [
        order_payload(service_handle=service.handle if service else None, **kwargs)
        for service, kwargs in specs
    ]
    load({"orders": orders})
    return orders


def submit(**kwargs: Any) -> str:
    """Publish a cancellations.submit message, as a storefront would."""
    from cancelflow.worker.app import celery_app

    kwargs.setdefault("client_request_id", secrets.token_hex(8))
    kwargs.setdefault("reason", 1)
    celery_app.send_task("cancellations.submit", kwargs=kwargs)
    return str(kwargs["client_request_id"])


def request_row(client_request_id: str) -> Any:
    from cancelflow.db import transaction
    from cancelflow.models import CancellationRequest

    with transaction() as session:
        return session.scalars(
            select(CancellationRequest).where(CancellationRequest.client_request_id == client_request_id)
        ).one_or_none()


def wait_status(client_request_id: str, *statuses: str, timeout: float = 60) -> Any:
    return wait_for(
        lambda: (r := request_row(client_request_id)) is not None and r.status.value in statuses and r,
        timeout=timeout,
        what=f"request {client_request_id} in {statuses}",
    )


def plan_for(request_id: int) -> Any:
    from cancelflow.db import transaction
    from cancelflow.models import CancellationPlan

    with transaction() as session:
        return session.scalars(
            select(CancellationPlan).where(CancellationPlan.request_id == request_id)
        ).one()


def wait_plan(request_id: int, *statuses: str, timeout: float = 60) -> Any:
    def check() -> Any:
        from cancelflow.db import transaction
        from cancelflow.models import CancellationPlan

        with transaction() as session:
            plan = session.scalars(
                select(CancellationPlan).where(CancellationPlan.request_id == request_id)
            ).one_or_none()
        return plan is not None and plan.status.value in statuses and plan

    return wait_for(check, timeout=timeout, what=f"plan of request {request_id} in {statuses}")


def money_rows(plan_id: int) -> list[Any]:
    from cancelflow.db import transaction
    from cancelflow.models import MoneyTransaction

    with transaction() as session:
        return list(session.scalars(select(MoneyTransaction).where(MoneyTransaction.plan_id == plan_id)))


def count(model: Any, *where: Any) -> int:
    from cancelflow.db import transaction

    with transaction() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def amount(unit_price: str, quantity: int) -> Decimal:
    return Decimal(unit_price) * quantity
