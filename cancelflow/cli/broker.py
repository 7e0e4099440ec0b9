"""`cancelflow broker …`: broker users for storefronts, which can publish intake messages and nothing else."""

from __future__ import annotations

import secrets
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="Broker users (RabbitMQ permissions or a Redis ACL user).", no_args_is_help=True)
err = Console(stderr=True)


@app.command("storefront-user")
def storefront_user(
    name: Annotated[str, typer.Argument(help="The broker user's name.")] = "storefront",
    password: Annotated[
        str | None,
        typer.Option(help="Its password; a new random one when left out (an existing user gets it too)."),
    ] = None,
) -> None:
    """Create or update a broker user that can only publish `cancellations.submit` to the intake exchange.

    Uses CANCELFLOW_BROKER_URL with its administrative rights (Redis: ACL SETUSER; RabbitMQ: rabbitmqctl on
    this host) and prints the storefront's broker URL, password included, on standard output.
    """
    from cancelflow.cli.guard import CONFIG_EXIT, explain
    from cancelflow.config import get_settings
    from cancelflow.worker.storefront_access import BrokerAccessError, ensure_storefront_user

    try:
        access = ensure_storefront_user(get_settings(), name, password or secrets.token_urlsafe(32))
    except BrokerAccessError as exc:
        # A broker that does not answer is a connection problem like any other command's: exit code 2.
        unreachable = explain(exc.__cause__) if exc.__cause__ is not None else None
        err.print(f"[red]error:[/red] {unreachable or exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(CONFIG_EXIT if unreachable else 1) from exc
    err.print(f"broker user {access.username!r}: publishes to the intake exchange only", highlight=False)
    typer.echo(access.url)
