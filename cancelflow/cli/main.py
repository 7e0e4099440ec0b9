"""The `cancelflow` command: run the stack, load data, submit and approve, look at requests, tokens."""

from __future__ import annotations

import json
import sys
import time
import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from cancelflow.cli import exports as cli_exports
from cancelflow.cli import ops
from cancelflow.cli import tags as cli_tags
from cancelflow.cli import users as cli_users
from cancelflow.cli.textcheck import TextCheckedGroup
from cancelflow.cli.webhooks import webhooks_app

app = typer.Typer(
    cls=TextCheckedGroup, help="cancelflow: order-cancellation workflows.", no_args_is_help=True
)
tokens_app = typer.Typer(
    help="API tokens for staff, storefronts and fulfillment services.", no_args_is_help=True
)
app.add_typer(tokens_app, name="tokens")
ops.register(app)  # escalations, services set-policy, dead, replay
app.add_typer(cli_tags.tags_app, name="tags")
app.command("export")(cli_exports.export)
app.add_typer(cli_users.app, name="users")
app.add_typer(webhooks_app, name="webhooks")
# Piped output (files, CI logs) gets wide tables rather than columns cut at 80 characters.
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _transaction() -> AbstractContextManager[Session]:
    from cancelflow.db import transaction

    return transaction()


@app.command()
def run(
    no_demo: Annotated[bool, typer.Option("--no-demo", help="Do not load the demo data set.")] = False,
) -> None:
    """Start everything: database and broker (embedded unless configured), API, worker, beat, Flower, sandboxes."""
    from cancelflow.cli.run import run as run_stack

    raise typer.Exit(run_stack(with_demo=not no_demo))


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (Alembic)."""
    from cancelflow.db import migrate as do_migrate

    do_migrate()
    console.print("schema is at head")


@app.command("import")
def import_file(path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)]) -> None:
    """Load orders, fulfillment orders, services and reasons from a JSON file (see examples/import.json)."""
    from cancelflow.errors import Invalid
    from cancelflow.services.importer import import_payload

    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        _fail(f"{path} is not UTF-8 text: {exc}")
    except json.JSONDecodeError as exc:
        _fail(f"{path} is not valid JSON: {exc}")
    try:
        with _transaction() as session:
            counts = import_payload(session, payload)
    except Invalid as exc:
        for field, messages in exc.field_errors.items():
            err.print(f"  {field}: {'; '.join(messages)}")
        _fail(exc.message)
    _print_counts(counts)


@app.command()
def demo(
    orders: Annotated[int, typer.Option(min=1, max=100_000)] = 50,
    callback_base: Annotated[str, typer.Option(help="Base URL of the sandbox fulfillment service.")] = (
        "http://127.0.0.1:8101"
    ),
) -> None:
    """Load a generated data set (deterministic: loading it twice changes nothing)."""
    from cancelflow.services.demo import build_demo_payload
    from cancelflow.services.importer import import_payload

    services = {
        h: {"secret": f"demo-secret-{h}", "callback_url": f"{callback_base}/{h}"}
        for h in ("sandbox-accept", "sandbox-slow", "sandbox-reject")
    }
    with _transaction() as session:
        counts = import_payload(session, build_demo_payload(services=services, orders=orders))
    _print_counts(counts)


def _print_counts(counts: dict[str, int]) -> None:
    table = Table("kind", "rows written")
    for kind, count in counts.items():
        table.add_row(kind, str(count))
    console.print(table)


@app.command()
def submit(
    order_item: Annotated[int, typer.Option(help="Order item id.")],
    reason: Annotated[int, typer.Option(help="Cancellation reason id.")],
    quantity: Annotated[int | None, typer.Option(help="Default: everything still cancellable.")] = None,
    cancellation_type: Annotated[str, typer.Option(help="cancel or refund.")] = "cancel",
    description: Annotated[str | None, typer.Option()] = None,
    iban: Annotated[str | None, typer.Option()] = None,
    holder_name: Annotated[str | None, typer.Option()] = None,
    loyalty: Annotated[bool, typer.Option("--loyalty", help="Refund as loyalty money.")] = False,
    client_request_id: Annotated[
        str | None, typer.Option(help="Idempotency id; a new UUID by default.")
    ] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the request to be stored (0: don't).")
    ] = 10.0,
) -> None:
    """Publish a `cancellations.submit` message, exactly as a storefront does."""
    from cancelflow.worker.app import celery_app

    kwargs: dict[str, Any] = {
        "client_request_id": client_request_id or str(uuid.uuid4()),
        "order_item": order_item,
        "reason": reason,
        "quantity": quantity,
        "cancellation_type": cancellation_type,
        "description": description,
        "iban": iban,
        "holder_name": holder_name,
        "fully_refund_as_loyalty_money": loyalty,
    }
    celery_app.send_task("cancellations.submit", kwargs={k: v for k, v in kwargs.items() if v is not None})
    console.print(f"submitted client_request_id={kwargs['client_request_id']}")
    if wait > 0:
        request_id = _wait_for_request(kwargs["client_request_id"], wait)
        if request_id is None:
            _fail("not stored yet: is a worker running? (the message stays queued)", code=2)
        else:
            show(request_id)


def _wait_for_request(client_request_id: str, seconds: float) -> int | None:
    from sqlalchemy import select

    from cancelflow.models import CancellationRequest

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with _transaction() as session:
            found = session.scalars(
                select(CancellationRequest.id).where(
                    CancellationRequest.client_request_id == client_request_id
                )
            ).first()
        if found is not None:
            return int(found)
        time.sleep(0.3)
    return None


@app.command()
def approve(request_id: int, actor: Annotated[str, typer.Option(help="Who approves.")] = "cli") -> None:
    """Approve a waiting request (staff approval): its plan is made and routing starts."""
    from cancelflow.errors import CancelflowError
    from cancelflow.services import workflow

    try:
        with _transaction() as session:
            _install_sender()
            plan = workflow.approve(session, workflow.get_request(session, request_id), actor=actor)
            plan_id = plan.id
    except CancelflowError as exc:
        _fail(exc.message)
    console.print(f"request {request_id} approved; plan {plan_id} is routing")


def _install_sender() -> None:
    from cancelflow.worker.app import install_sender

    install_sender()


@app.command()
def show(request_id: int) -> None:
    """A request with its plan, steps, fulfillment orders, money and events."""
    from sqlalchemy import select

    from cancelflow.models import (
        CancellationPlan,
        CancellationRequest,
        Event,
        FulfillmentOrder,
        MoneyTransaction,
        WorkflowStep,
    )
    from cancelflow.services.iban import mask

    with _transaction() as session:
        request = session.get(CancellationRequest, request_id)
        if request is None:
            _fail(f"no cancellation request {request_id}")
        assert request is not None
        plan = session.scalars(
            select(CancellationPlan).where(CancellationPlan.request_id == request_id)
        ).first()
        console.print(
            f"[bold]request {request.id}[/bold] {request.status.value}  item {request.order_item_id} "
            f"x{request.quantity}  {request.cancellation_type.value}  iban {mask(request.iban)}  "
            f"client {request.client_request_id}"
        )
        if request.rejection_code:
            console.print(f"  rejected: {request.rejection_code} — {request.rejection_message}")
        if plan is not None:
            console.print(
                f"[bold]plan {plan.id}[/bold] {plan.status.value}  {plan.amount} {plan.currency} → "
                f"{plan.refund_target.value}  deadline {plan.deadline_at}  {plan.failure_reason or ''}"
            )
            table = Table("step", "kind", "status", "attempt", "next attempt", "last error")
            for step in session.scalars(
                select(WorkflowStep).where(WorkflowStep.request_id == request_id).order_by(WorkflowStep.id)
            ):
                table.add_row(
                    str(step.id),
                    step.kind.value,
                    step.status.value,
                    str(step.attempt),
                    str(step.next_attempt_at)[:19],
                    (step.last_error or "")[:60],
                )
            console.print(table)
            for fo in session.scalars(
                select(FulfillmentOrder).where(FulfillmentOrder.cancellation_plan_id == plan.id)
            ):
                console.print(f"  fulfillment order {fo.id}: {fo.request_status.value}/{fo.status.value}")
            for money in session.scalars(select(MoneyTransaction).where(MoneyTransaction.plan_id == plan.id)):
                console.print(
                    f"  money {money.target.value} {money.amount} {money.currency} "
                    f"key={money.idempotency_key} ext={money.external_id}"
                )
        events = Table("event", "entity", "kind", "from", "to", "at")
        ids = [request.id]
        for event in session.scalars(
            select(Event)
            .where(
                ((Event.entity == "request") & Event.entity_id.in_(ids))
                | ((Event.entity == "plan") & (Event.entity_id == (plan.id if plan else -1)))
            )
            .order_by(Event.id)
        ):
            events.add_row(
                str(event.id),
                event.entity,
                event.kind,
                event.from_status or "",
                event.to_status or "",
                str(event.created_date)[:19],
            )
        console.print(events)


@app.command()
def sweep() -> None:
    """Re-send due steps once, now (what beat does on its schedule)."""
    from cancelflow.services import steps

    with _transaction() as session:
        _install_sender()
        count = steps.sweep_due(session)
    console.print(f"re-sent {count} due steps")


@tokens_app.command("create")
def tokens_create(
    name: str,
    kind: Annotated[str, typer.Option(help="staff, storefront or fulfillment_service")] = "staff",
    service: Annotated[
        str | None, typer.Option(help="Fulfillment service handle (fulfillment_service tokens).")
    ] = None,
    channel: Annotated[int | None, typer.Option(help="Channel id (storefront tokens).")] = None,
    permission: Annotated[list[str] | None, typer.Option(help="Extra permission, e.g. view_iban.")] = None,
) -> None:
    """Make a token; its key is printed once."""
    from cancelflow.errors import CancelflowError
    from cancelflow.services.tokens import create_token

    try:
        with _transaction() as session:
            _, key = create_token(
                session,
                name=name,
                kind=kind,
                fulfillment_service_handle=service,
                channel_id=channel,
                permissions=permission or [],
            )
    except (CancelflowError, ValueError) as exc:
        _fail(str(exc))
    console.print(key)


@tokens_app.command("list")
def tokens_list() -> None:
    """List tokens (prefixes only)."""
    from sqlalchemy import select

    from cancelflow.models import ApiToken

    table = Table("name", "kind", "prefix", "service", "channel", "permissions", "revoked")
    with _transaction() as session:
        for t in session.scalars(select(ApiToken).order_by(ApiToken.id)):
            table.add_row(
                t.name,
                t.kind.value,
                t.key_prefix + "…",
                str(t.fulfillment_service_id or ""),
                str(t.channel_id or ""),
                ",".join(t.permissions),
                str(t.revoked_at or ""),
            )
    console.print(table)


@tokens_app.command("revoke")
def tokens_revoke(name: str) -> None:
    """Revoke a token by name."""
    from cancelflow.services.tokens import revoke

    with _transaction() as session:
        if not revoke(session, name):
            _fail(f"no active token named {name!r}")
    console.print(f"revoked {name}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
