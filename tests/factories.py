"""Typed, keyword-only builders of the rows tests need, with ids unique across the test run.

Two kinds of builder live here, and each says which it is:
- through the real services, returning the typed rows they wrote (`new_service`, `new_order` via the
  importer; `new_request` via intake; `approved_plan`, `routed_plan` via intake and the workflow;
  `bank_transfer_request_over_api` via the API; `api_token` via the token service): where a product rule
  applies to the row (import checks, quantities, transitions, key hashing), the test gets the row that rule
  made, never one it could not make;
- straight data (`*_payload` dicts, for the tests that post or import them themselves because the payload is
  what they test; `captured_sender`, `upgrade_once`): where the test is about something else.

Shared fixtures built on these (`client`, `staff`, `sent`, `json_logs`, token revocation) are in
tests/conftest.py; helpers for real processes and sockets (`running`, `clean_workdir`, `serving`) in
tests/harness.py.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cancelflow.models import (
    ApiToken,
    CancellationPlan,
    CancellationRequest,
    Customer,
    FulfillmentOrder,
    FulfillmentService,
    Order,
    OrderItem,
    WorkflowStep,
)
from cancelflow.models.enums import StepKind
from cancelflow.services import after_commit

if TYPE_CHECKING:
    from fastapi.testclient import TestClient
    from sqlalchemy.orm import Session

_ids = itertools.count(random.randrange(10**9, 2 * 10**9, 10**5))
VALID_IBAN = "DE89370400440532013000"


def next_id() -> int:
    return next(_ids)


def service_payload(
    *,
    handle: str | None = None,
    callback_url: str = "http://127.0.0.1:9/unused",
    secret: str = "sandbox-secret-123",
    deadline_seconds: int = 3600,
    reminder_interval_seconds: int = 600,
    reminder_count: int = 3,
    deadline_action: str = "escalate",
) -> dict[str, Any]:
    sid = next_id()
    return {
        "id": sid,
        "handle": handle or f"svc-{sid}",
        "name": f"Service {sid}",
        "callback_url": callback_url,
        "secret": secret,
        "location_id": sid,
        "location_name": "Apple Api Shipwire",
        "country_code": "DE",
        "reply_policy": {
            "deadline_seconds": deadline_seconds,
            "reminder_interval_seconds": reminder_interval_seconds,
            "reminder_count": reminder_count,
            "deadline_action": deadline_action,
        },
    }


def order_payload(
    *,
    service_handle: str | None = None,
    request_status: str = "accepted",
    fo_status: str = "in_progress",
    quantity: int = 2,
    unit_price: str = "49.90",
    method: str = "card",
    currency: str = "try",
    items: int = 1,
    email: str | None = None,
    channel: int = 1,
    with_fulfillment_order: bool = True,
) -> dict[str, Any]:
    order_id = next_id()
    item_rows = [
        {
            "id": next_id(),
            "sku": f"SKU-{order_id}-{n}",
            "product_name": f"Product {n}",
            "quantity": quantity,
            "unit_price": unit_price,
            "variant_id": 49148385,
            "inventory_item_id": 49148385,
        }
        for n in range(items)
    ]
    fos = []
    if with_fulfillment_order:
        fos.append(
            {
                "id": next_id(),
                "fulfillment_service": service_handle,
                "request_status": request_status if service_handle else "unsubmitted",
                "status": fo_status if service_handle else "open",
                "destination": {
                    "id": order_id,
                    "address1": "Chestnut Street 92",
                    "address2": "",
                    "city": "Louisville",
                    "company": None,
                    "country": "United States",
                    "email": "bob.norman@hostmail.com",
                    "first_name": "Bob",
                    "last_name": "Norman",
                    "phone": "555-625-1199",
                    "province": "Kentucky",
                    "zip": "40202",
                },
                "line_items": [
                    {"id": next_id(), "order_item": i["id"], "quantity": quantity} for i in item_rows
                ],
            }
        )
    return {
        "id": order_id,
        "number": f"T{order_id}",
        "channel": channel,
        "customer": {
            "id": order_id,
            "first_name": "Bob",
            "last_name": "Norman",
            "email": email or f"bob{order_id}@example.com",
            "channel": channel,
        },
        "currency": currency,
        "shipping_option_slug": "standard",
        "tracking_number": f"TRK{order_id}",
        "payment": {"method": method, "amount": "999.99", "reference": f"pay_{order_id}"},
        "items": item_rows,
        "fulfillment_orders": fos,
    }


def reference_payload() -> dict[str, Any]:
    return {
        "channels": [{"id": 1, "name": "Web"}, {"id": 2, "name": "App"}],
        "cancellation_reasons": [
            {"id": 1, "subject": "Changed my mind", "cancellation_type": "cancel"},
            {"id": 3, "subject": "Damaged", "cancellation_type": "refund"},
        ],
    }


def load(payload: dict[str, Any]) -> dict[str, int]:
    """Import through the real import service, committed."""
    from cancelflow.db import transaction
    from cancelflow.services.importer import import_payload

    with transaction() as session:
        return import_payload(session, {**reference_payload(), **payload})


# --- rows built through the real services -------------------------------------------------------------------


@dataclass(frozen=True)
class PlacedOrder:
    """An order the importer wrote, with its customer, items and fulfillment orders (detached, read-only),
    and the payload it was imported from."""

    order: Order
    customer: Customer
    items: list[OrderItem]
    fulfillment_orders: list[FulfillmentOrder]
    payload: dict[str, Any]

    @property
    def id(self) -> int:
        return self.order.id

    @property
    def item_id(self) -> int:
        """The first item's id: what most cancellation requests name."""
        return self.items[0].id


def new_service(**kwargs: Any) -> FulfillmentService:
    """A fulfillment service imported through the real import service (callback checks apply)."""
    from cancelflow.db import transaction

    payload = service_payload(**kwargs)
    load({"fulfillment_services": [payload]})
    with transaction() as session:
        service = session.get_one(FulfillmentService, payload["id"])
        session.expunge(service)
    return service


@contextmanager
def _unit_of_work(session: Session | None) -> Iterator[Session]:
    """`session` as it is (the caller's, often rolled back after the test), else a committed transaction
    whose rows are handed back detached."""
    if session is not None:
        yield session
        return
    from cancelflow.db import transaction

    with transaction() as own:
        yield own
        own.flush()
        own.expunge_all()


def new_order(
    *, service: FulfillmentService | None = None, session: Session | None = None, **kwargs: Any
) -> PlacedOrder:
    """An order imported through the real import service, in `session` or committed on its own;
    `kwargs` are those of `order_payload`. The rows handed back are a detached snapshot of the import."""
    from sqlalchemy import select

    from cancelflow.services.importer import import_payload

    if service is not None:
        kwargs["service_handle"] = service.handle
    payload = order_payload(**kwargs)
    with _unit_of_work(session) as db:
        import_payload(db, {**reference_payload(), "orders": [payload]})
        order = db.get_one(Order, payload["id"])
        customer = db.get_one(Customer, order.customer_id)
        items = list(
            db.scalars(select(OrderItem).where(OrderItem.order_id == order.id).order_by(OrderItem.id))
        )
        fos = list(
            db.scalars(
                select(FulfillmentOrder)
                .where(FulfillmentOrder.order_id == order.id)
                .order_by(FulfillmentOrder.id)
            )
        )
        for row in (order, customer, *items, *fos):
            db.expunge(row)  # a snapshot: what the test's session loads later is loaded fresh
    return PlacedOrder(order, customer, items, fos, payload)


def new_request(
    order: PlacedOrder | None = None, *, session: Session | None = None, **message: Any
) -> CancellationRequest:
    """A cancellation request submitted through the real intake service (waiting, or rejected by its rules),
    in `session` or committed on its own.

    Without `order`, a new one with no fulfillment service is imported first; `message` adds to or
    overrides the storefront message (`client_request_id`, `order_item` and `reason` are filled in).
    """
    from cancelflow.services import intake

    order = order or new_order(session=session)
    raw = {"client_request_id": uuid.uuid4().hex[:16], "order_item": order.item_id, "reason": 1, **message}
    with _unit_of_work(session) as db:
        request = intake.submit(db, raw).request
    return request


def bank_transfer_request_over_api(
    client: TestClient,
    headers: dict[str, str],
    *,
    iban: str = VALID_IBAN,
    holder_name: str = "Max Mustermann",
) -> int:
    """A bank-transfer request for a new channel-1 order, created by `POST /api/v1/cancellation_requests/`
    with `headers` (the API's validation, permissions and IBAN handling apply): its id."""
    order = new_order(method="bank_transfer", channel=1)
    body = {"order_item": order.item_id, "reason": 1, "quantity": 1, "iban": iban, "holder_name": holder_name}
    response = client.post("/api/v1/cancellation_requests/", headers=headers, json=body)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def approved_plan(
    session: Session, *, service: dict[str, Any] | None = None, **order_kwargs: Any
) -> CancellationPlan:
    """Inside `session` (not committed): an order imported with `service` (a `service_payload`), a request
    for its first item submitted, and approved: all through the real importer, intake and workflow."""
    from cancelflow.services import approval
    from cancelflow.services.importer import import_payload

    if service is not None:
        import_payload(session, {**reference_payload(), "fulfillment_services": [service]})
        order_kwargs["service_handle"] = service["handle"]
    request = new_request(new_order(session=session, **order_kwargs), session=session)
    return approval.approve(session, request, actor="t")


def routed_plan(session: Session, service: dict[str, Any]) -> CancellationPlan:
    """`approved_plan`, then its route step run by the real handler: the service was asked to cancel."""
    from cancelflow.services import routing

    plan = approved_plan(session, service=service)
    routing.route_step(session, step_of(session, plan, StepKind.route))
    return plan


def step_of(session: Session, plan: CancellationPlan, kind: StepKind) -> WorkflowStep:
    """The plan's one step of `kind`."""
    from sqlalchemy import select

    return session.scalars(
        select(WorkflowStep).where(WorkflowStep.plan_id == plan.id, WorkflowStep.kind == kind)
    ).one()


# Every token a test made through `api_token`; tests/conftest.py revokes them when their module ends.
made_tokens: list[int] = []


def api_token(
    kind: str,
    *,
    name: str | None = None,
    fulfillment_service_handle: str | None = None,
    channel_id: int | None = None,
    permissions: list[str] | None = None,
) -> tuple[ApiToken, str]:
    """A token made by the real token service (the key is hashed, the kind checked): (row, key)."""
    from cancelflow.db import transaction
    from cancelflow.services.tokens import create_token

    with transaction() as session:
        token, key = create_token(
            session,
            name=name or f"{kind}-{uuid.uuid4().hex[:12]}",
            kind=kind,
            fulfillment_service_handle=fulfillment_service_handle,
            channel_id=channel_id,
            permissions=permissions or (),
        )
        session.expunge(token)
    made_tokens.append(token.id)
    return token, key


def token_key(kind: str, **kwargs: Any) -> str:
    """The key of a new token (see `api_token`)."""
    return api_token(kind, **kwargs)[1]


def auth(key: str) -> dict[str, str]:
    """The API's `Authorization` header for a token key."""
    return {"Authorization": f"Token {key}"}


def token_headers(kind: str, **kwargs: Any) -> dict[str, str]:
    """Headers carrying a new token of `kind` (see `api_token`)."""
    return auth(token_key(kind, **kwargs))


# --- straight rows and stand-ins ------------------------------------------------------------------------------


def upgrade_once(revision_file: str) -> None:
    """Run the `upgrade()` of `migrations/versions/<revision_file>.py` again on the test database.

    For data migrations: the test plants the rows an older release wrote, then checks what the migration
    makes of them (Alembic itself ran it on an empty database when the session started).
    """
    import importlib.util
    from pathlib import Path

    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    from cancelflow.db import get_engine

    path = Path(__file__).resolve().parents[1] / "migrations" / "versions" / f"{revision_file}.py"
    spec = importlib.util.spec_from_file_location(revision_file, path)
    assert spec is not None
    assert spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    with get_engine().begin() as connection, Operations.context(MigrationContext.configure(connection)):
        migration.upgrade()


def captured_sender() -> Iterator[list[after_commit.Send]]:
    """Install a sender that keeps every after-commit send in a list; restore the broker sender after."""
    captured: list[after_commit.Send] = []
    after_commit.set_sender(captured.append)
    try:
        yield captured
    finally:
        from cancelflow.worker.app import install_sender

        install_sender()
