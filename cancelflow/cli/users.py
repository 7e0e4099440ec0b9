"""`cancelflow users …`: the staff users who log in to the API for a token."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cancelflow.cli.guard import fail, failing_on, transaction

app = typer.Typer(help="Users who log in to the API (POST /api/v1/auth/login/).", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def _password(given: str | None) -> str:
    if given is not None:
        return given
    from cancelflow.cli.textcheck import checked_prompt

    return checked_prompt("Password", hide_input=True, confirmation_prompt=True)


@contextmanager
def _failing_on_any() -> Iterator[None]:
    """A `CancelflowError` from the block ends the command: its field messages on one line (its message when
    it has none), exit code 1."""
    from cancelflow.errors import CancelflowError

    try:
        yield
    except CancelflowError as exc:
        messages = [m for ms in getattr(exc, "field_errors", {}).values() for m in ms]
        fail("; ".join(messages) or exc.message)


@app.command("create")
def create(
    username: str,
    password: Annotated[
        str | None, typer.Option(help="The password (prompted for, hidden, when left out).")
    ] = None,
    permission: Annotated[
        list[str] | None, typer.Option(help="A permission to grant, e.g. view_iban (repeatable).")
    ] = None,
    staff: Annotated[
        bool,
        typer.Option(
            "--staff/--no-staff",
            help="Only staff users can log in to the API; their tokens carry their permissions.",
        ),
    ] = True,
    email: Annotated[str, typer.Option(help="The user's email.")] = "",
) -> None:
    """Create a user."""
    from cancelflow.services import users

    secret = _password(password)
    with _failing_on_any(), transaction() as session:
        user = users.create_user(
            session,
            username=username,
            password=secret,
            is_staff=staff,
            permissions=permission or [],
            email=email,
        )
        user_id = user.id
    console.print(f"created user {username} (id {user_id})")


@app.command("set-password")
def set_password(
    username: str,
    password: Annotated[
        str | None, typer.Option(help="The new password (prompted for when left out).")
    ] = None,
) -> None:
    """Change a user's password; the user's existing tokens are revoked."""
    from cancelflow.services import users

    secret = _password(password)
    with _failing_on_any(), transaction() as session:
        users.set_password(session, username, secret)
    console.print(f"password of {username} changed; its tokens are revoked")


@app.command("set-permissions")
def set_permissions(
    username: str,
    permission: Annotated[
        list[str] | None, typer.Option(help="Permission to grant (repeatable); none: revoke all.")
    ] = None,
) -> None:
    """Replace a user's permissions (its tokens follow)."""
    from cancelflow.errors import CancelflowError
    from cancelflow.services import users

    with failing_on(CancelflowError), transaction() as session:
        users.set_permissions(session, username, permission or [])
    console.print(f"permissions of {username}: {', '.join(sorted(set(permission or []))) or '(none)'}")


@app.command("deactivate")
def deactivate(username: str) -> None:
    """Deactivate a user: it can no longer log in, and its tokens are revoked now."""
    from cancelflow.errors import CancelflowError
    from cancelflow.services import users

    with failing_on(CancelflowError), transaction() as session:
        users.deactivate(session, username)
    console.print(f"user {username} deactivated; its tokens are revoked")


@app.command("list")
def list_users() -> None:
    """List users (never their passwords)."""
    from sqlalchemy import select

    from cancelflow.models import User

    table = Table("id", "username", "staff", "active", "permissions", "last login")
    with transaction() as session:
        for user in session.scalars(select(User).order_by(User.id)):
            table.add_row(
                str(user.id),
                user.username,
                "yes" if user.is_staff else "no",
                "yes" if user.is_active else "no",
                ",".join(user.permissions),
                str(user.last_login or ""),
            )
    console.print(table)
