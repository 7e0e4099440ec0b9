"""The `cancelflow` command: run the stack, load data, submit and approve, look at requests, tokens."""

from __future__ import annotations

import json
import sys
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from cancelflow.cli import broker as cli_broker
from cancelflow.cli import exports as cli_exports
from cancelflow.cli import ops
from cancelflow.cli import tags as cli_tags
from cancelflow.cli import users as cli_users
from cancelflow.cli.guard import GuardedGroup, fail, failing_on, refusing_invalid, transaction, wide_console
from cancelflow.cli.textcheck import TextCheckedGroup
from cancelflow.cli.webhooks import webhooks_app

if TYPE_CHECKING:
    from datetime import datetime

    from cancelflow.models import RejectedMessage


class RootGroup(TextCheckedGroup, GuardedGroup):
    """Arguments that cannot be stored are a usage error; a configuration or connection problem is one line
    and exit code 2, never a traceback."""


app = typer.Typer(help="cancelflow: order-cancellation workflows.", no_args_is_help=True, cls=RootGroup)
tokens_app = typer.Typer(
    help="API tokens for staff, storefronts and fulfillment services.", no_args_is_help=True
)
app.add_typer(tokens_app, name="tokens")
ops.register(app)  # escalations, services set-policy, dead, replay
app.add_typer(cli_tags.tags_app, name="tags")
app.command("export")(cli_exports.export)
app.add_typer(cli_users.app, name="users")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(cli_broker.app, name="broker")
console = wide_console()
err = Console(stderr=True)


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


REPLACE_SERVICES_HELP = (
    "Change the handle, callback URL or secret of a fulfillment service even while it has cancellation "
    "requests in flight (refused otherwise: they would be notified elsewhere or with a key it does not know)."
)


@app.command("import")
def import_file(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    replace_services: Annotated[bool, typer.Option("--replace-services", help=REPLACE_SERVICES_HELP)] = False,
) -> None:
    """Load orders, fulfillment orders, services and reasons from a JSON file (see examples/import.json)."""
    from cancelflow.services.importer import import_payload

    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        fail(f"{path} is not UTF-8 text: {exc}")
    except json.JSONDecodeError as exc:
        fail(f"{path} is not valid JSON: {exc}")
    with refusing_invalid(), transaction() as session:
        counts = import_payload(session, payload, replace_services=replace_services)
    _print_counts(counts)


@app.command()
def demo(
    orders: Annotated[int, typer.Option(min=1, max=100_000)] = 50,
    callback_base: Annotated[
        str | None,
        typer.Option(
            help="Base URL of the sandbox fulfillment service, for services the database does not have yet "
            "(default: the one `cancelflow run` starts); given, it also repoints the stored ones."
        ),
    ] = None,
    replace_services: Annotated[bool, typer.Option("--replace-services", help=REPLACE_SERVICES_HELP)] = False,
) -> None:
    """Load a generated data set (deterministic: loading it twice changes nothing).

    Fulfillment services the database has already (those `cancelflow run` made) keep their secret and
    callback URL, so demo data loaded into a running stack leaves it working. New ones get the secret of
    `cancelflow run`'s credentials file when there is one, else a random one. The callback base is the
    operator's own choice, so the import accepts it even on loopback; the worker reaches it only if
    CANCELFLOW_OUTBOUND_ALLOW lists it (`make run` lists its sandbox).
    """
    from urllib.parse import urlsplit

    from cancelflow.cli.run import CREDENTIALS_FILE, SANDBOX_SERVICES
    from cancelflow.config import get_settings
    from cancelflow.config.allowlist import AllowRule, parse_allow_rule
    from cancelflow.integrations.outbound import OutboundPolicy
    from cancelflow.services.demo import build_demo_payload, demo_services
    from cancelflow.services.importer import import_payload

    def destination(url: str) -> AllowRule:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        return parse_allow_rule(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    settings = get_settings()
    base = (callback_base or f"http://127.0.0.1:{settings.sandbox_fulfillment_port}").rstrip("/")
    try:
        destination(base)
    except ValueError as exc:
        fail(f"--callback-base: {exc}")
    known = _run_credentials(settings.data_dir / CREDENTIALS_FILE).get("services", {})

    def secret(handle: str) -> str | None:
        value = known.get(handle, {}).get("secret") if isinstance(known, dict) else None
        return value if isinstance(value, str) and value else None

    with refusing_invalid(), transaction() as session:
        services = demo_services(
            session,
            SANDBOX_SERVICES,
            secret=secret,
            callback_url=lambda handle: f"{base}/{handle}",
            keep_stored=callback_base is None,
        )
        # The operator's own destinations: the callback base given here, or the ones already stored (a
        # running `make run` stack's sandbox, on a port this shell's settings may not know).
        rules: dict[AllowRule, None] = {}
        for service in services.values():
            with suppress(ValueError):  # not a URL the import accepts: it says so itself
                rules[destination(str(service["callback_url"]))] = None
        counts = import_payload(
            session,
            build_demo_payload(services=services, orders=orders),
            outbound_policy=OutboundPolicy.from_settings().including(rules),
            replace_services=replace_services,
        )
    _print_counts(counts)


def _run_credentials(path: Path) -> dict[str, object]:
    """`cancelflow run`'s credentials file, or {} when there is none (or it cannot be read)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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
        float,
        typer.Option(help="Seconds to wait for the request to be stored or the message refused (0: don't)."),
    ] = 10.0,
) -> None:
    """Publish a `cancellations.submit` message, exactly as a storefront does."""
    from cancelflow.services import after_commit

    client_request_id = client_request_id or str(uuid.uuid4())
    kwargs: dict[str, object] = {
        "client_request_id": client_request_id,
        "order_item": order_item,
        "reason": reason,
        "quantity": quantity,
        "cancellation_type": cancellation_type,
        "description": description,
        "iban": iban,
        "holder_name": holder_name,
        "fully_refund_as_loyalty_money": loyalty,
    }
    since = _database_now() if wait > 0 else None
    after_commit.send_now(
        after_commit.Send(
            "cancellations.submit", (), kwargs=tuple((k, v) for k, v in kwargs.items() if v is not None)
        )
    )
    console.print(f"submitted client_request_id={client_request_id}")
    if since is None:
        return
    outcome = _wait_for_outcome(client_request_id, since, wait)
    if outcome is None:
        fail("not stored yet: is a worker running? (the message stays queued)", code=2)
    elif isinstance(outcome, int):
        show(outcome)
    else:
        for field, messages in outcome.errors.items():
            err.print(f"  {field}: {'; '.join(messages)}", highlight=False, markup=False)
        fail(f"the worker refused the message ({outcome.code}): {outcome.message}")


def _database_now() -> datetime | None:
    """The database's clock: a refusal recorded from then on answers this message, not an older one."""
    from sqlalchemy import func, select

    with transaction() as session:
        return session.scalar(select(func.now()))


def _wait_for_outcome(
    client_request_id: str, since: datetime, seconds: float
) -> int | RejectedMessage | None:
    """The id of the stored request, or the worker's recorded refusal, as soon as either exists; None on
    timeout."""
    from sqlalchemy import select

    from cancelflow.models import CancellationRequest
    from cancelflow.services.intake import rejection_since

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with transaction() as session:
            found = session.scalars(
                select(CancellationRequest.id).where(
                    CancellationRequest.client_request_id == client_request_id
                )
            ).first()
            if found is not None:
                return int(found)
            refused = rejection_since(session, client_request_id, since)
            if refused is not None:
                return refused
        time.sleep(0.2)
    return None


@app.command()
def approve(request_id: int, actor: Annotated[str, typer.Option(help="Who approves.")] = "cli") -> None:
    """Approve a waiting request (staff approval): its plan is made and routing starts."""
    from cancelflow.errors import CancelflowError
    from cancelflow.services import approval, locking

    with failing_on(CancelflowError), transaction() as session:
        plan = approval.approve(session, locking.get_request(session, request_id), actor=actor)
        plan_id = plan.id
    console.print(f"request {request_id} approved; plan {plan_id} is routing")


@app.command()
def show(request_id: int) -> None:
    """A request with its plan, steps, fulfillment orders, money and events."""
    from cancelflow.services import request_view
    from cancelflow.services.iban import mask

    with transaction() as session:
        # One snapshot for the whole picture: a request moving on meanwhile must not show its old status
        # above the events of its new one.
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        picture = request_view.picture(session, request_id)
        if picture is None:
            fail(f"no cancellation request {request_id}")
        assert picture is not None
        request, plan = picture.detail.request, picture.detail.plan
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
            for step in picture.detail.steps:
                table.add_row(
                    str(step.id),
                    step.kind.value,
                    step.status.value,
                    str(step.attempt),
                    str(step.next_attempt_at or "")[:19],
                    (step.last_error or "")[:60],
                )
            console.print(table)
            for fo in picture.fulfillment_orders:
                console.print(f"  fulfillment order {fo.id}: {fo.request_status.value}/{fo.status.value}")
            for money in picture.detail.money:
                console.print(
                    f"  money {money.target.value} {money.amount} {money.currency} "
                    f"key={money.idempotency_key} ext={money.external_id}"
                )
        events = Table("event", "entity", "kind", "from", "to", "at")
        for event in picture.events:
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

    with transaction() as session:
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
        with transaction() as session:
            _, key = create_token(
                session,
                name=name,
                kind=kind,
                fulfillment_service_handle=service,
                channel_id=channel,
                permissions=permission or [],
            )
    except (CancelflowError, ValueError) as exc:
        fail(str(exc))
    console.print(key)


@tokens_app.command("list")
def tokens_list() -> None:
    """List tokens (prefixes only)."""
    from sqlalchemy import select

    from cancelflow.models import ApiToken

    table = Table("name", "kind", "prefix", "service", "channel", "permissions", "revoked")
    with transaction() as session:
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

    with transaction() as session:
        if not revoke(session, name):
            fail(f"no active token named {name!r}")
    console.print(f"revoked {name}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
