"""`cancelflow webhooks …`: subscribe storefronts, look at deliveries and their attempts, redeliver."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cancelflow.cli.guard import fail, failing_on, refusing_invalid, transaction, wide_console

webhooks_app = typer.Typer(
    help="Outbound webhooks to storefronts: subscriptions, deliveries, attempts.", no_args_is_help=True
)
# Piped output (files, CI logs) gets wide tables, as in cli.main: event ids are not cut.
console = wide_console()
err = Console(stderr=True)


@webhooks_app.command("add")
def add(
    url: str,
    events: Annotated[
        str, typer.Option(help="Comma-separated event types, e.g. request.completed,plan.failed, or '*'.")
    ],
    channel: Annotated[int | None, typer.Option(help="Only requests of this channel.")] = None,
) -> None:
    """Subscribe URL to events; prints the subscription id and its signing secret (shown once)."""
    from cancelflow.services.webhooks import subscriptions as webhook_subscriptions

    with refusing_invalid(), transaction() as session:
        subscription = webhook_subscriptions.create_subscription(
            session, url=url, events=events.split(","), channel_id=channel
        )
        subscription_id, secret = subscription.id, subscription.secret
    console.print(f"subscription {subscription_id}")
    console.print(f"secret {secret}")


@webhooks_app.command("list")
def list_() -> None:
    """Active subscriptions (secrets are not shown); a paused one says since when and why."""
    from cancelflow.services.webhooks import subscriptions as webhook_subscriptions

    table = Table("id", "url", "events", "channel", "status", "failures", "created")
    paused: list[str] = []
    with transaction() as session:
        for s in webhook_subscriptions.list_subscriptions(session):
            status = "active" if s.paused_at is None else f"paused since {str(s.paused_at)[:19]}"
            table.add_row(
                str(s.id),
                webhook_subscriptions.display_url(s.url),
                ",".join(s.events),
                str(s.channel_id or "all"),
                status,
                str(s.consecutive_failures),
                str(s.created_date)[:19],
            )
            if s.paused_at is not None:
                paused.append(f"subscription {s.id} paused: {s.pause_reason}")
    console.print(table)
    for line in paused:
        console.print(f"{line} (`cancelflow webhooks resume ID` sends its deliveries again)")


@webhooks_app.command("resume")
def resume(subscription_id: int) -> None:
    """Resume a subscription paused after too many failures in a row; its waiting deliveries go out."""
    from cancelflow.errors import NotFound
    from cancelflow.models import WebhookSubscription
    from cancelflow.services.webhooks import subscriptions as webhook_subscriptions

    with failing_on(NotFound), transaction() as session:
        existing = session.get(WebhookSubscription, subscription_id)
        was = "resumed" if existing is not None and existing.paused_at is not None else "not paused"
        webhook_subscriptions.resume_subscription(session, subscription_id)
    console.print(f"subscription {subscription_id}: {was}")


@webhooks_app.command("remove")
def remove(subscription_id: int) -> None:
    """Deactivate a subscription (its history stays; unfinished deliveries stop)."""
    from cancelflow.errors import NotFound
    from cancelflow.services.webhooks import subscriptions as webhook_subscriptions

    with failing_on(NotFound), transaction() as session:
        webhook_subscriptions.remove_subscription(session, subscription_id)
    console.print(f"removed subscription {subscription_id}")


@webhooks_app.command("deliveries")
def deliveries(
    status: Annotated[str | None, typer.Option(help="pending, failed, delivered or dead.")] = None,
    subscription: Annotated[int | None, typer.Option(help="Subscription id.")] = None,
    request: Annotated[int | None, typer.Option(help="Cancellation request id.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
) -> None:
    """Deliveries, newest first."""
    from cancelflow.models import DeliveryStatus
    from cancelflow.services.webhooks import delivery as webhook_delivery

    try:
        wanted = DeliveryStatus(status) if status is not None else None
    except ValueError:
        fail(f"unknown status {status!r}; one of {', '.join(s.value for s in DeliveryStatus)}")
        return
    table = Table("id", "sub", "event", "request", "status", "attempt", "code", "next attempt", "event id")
    with transaction() as session:
        for d in webhook_delivery.list_deliveries(
            session, status=wanted, subscription_id=subscription, request_id=request, limit=limit
        ):
            table.add_row(
                str(d.id),
                str(d.subscription_id),
                d.event_type,
                str(d.request_id),
                d.status.value,
                str(d.attempt),
                str(d.last_status_code or ""),
                str(webhook_delivery.next_attempt(d) or "")[:19],
                str(d.event_id),
            )
    console.print(table)


@webhooks_app.command("attempts")
def attempts(delivery_id: int) -> None:
    """Every attempt of a delivery: when, how long, the answer."""
    from cancelflow.errors import NotFound
    from cancelflow.services.webhooks import delivery as webhook_delivery

    table = Table("id", "at", "ms", "code", "outcome", "error")
    with failing_on(NotFound), transaction() as session:
        for a in webhook_delivery.list_attempts(session, delivery_id):
            table.add_row(
                str(a.id),
                str(a.attempted_at)[:23],
                str(a.duration_ms),
                str(a.status_code or ""),
                a.outcome.value,
                (a.error or "")[:60],
            )
    console.print(table)


@webhooks_app.command("redeliver")
def redeliver(delivery_id: int) -> None:
    """Deliver again by hand: a new attempt cycle with the same event id."""
    from cancelflow.errors import CancelflowError
    from cancelflow.services.webhooks import delivery as webhook_delivery

    with failing_on(CancelflowError), transaction() as session:
        webhook_delivery.redeliver(session, delivery_id)
    console.print(f"delivery {delivery_id} queued for redelivery")
