"""Every `cancelflow` command: a configuration or connection problem is one line on stderr and exit code 2.

A traceback is for a bug. Settings that do not parse, no database or broker to use, a database or broker that
does not answer, a database without the schema: each is something the user fixes from the message alone.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, NoReturn

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from sqlalchemy.orm import Session

    from cancelflow.errors import CancelflowError

CONFIG_EXIT: Final = 2


def explain(exc: BaseException) -> str | None:
    """The one-line message for a configuration or connection problem, or None for anything else."""
    from kombu.exceptions import OperationalError as BrokerError
    from pydantic import ValidationError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from sqlalchemy.exc import InterfaceError, ProgrammingError
    from sqlalchemy.exc import OperationalError as DatabaseError

    from cancelflow.errors import ConfigurationError, TransientError

    if isinstance(exc, ConfigurationError):
        return str(exc)
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        problems = [
            f"CANCELFLOW_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        ]
        return "invalid setting " + "; ".join(problems)
    if isinstance(exc, (DatabaseError, InterfaceError)):
        return f"the database does not answer: {_first_line(exc.orig or exc)}"
    if isinstance(exc, ProgrammingError) and type(exc.orig).__name__ == "UndefinedTable":
        return "the database has no cancelflow schema yet: run `cancelflow migrate`"
    if isinstance(exc, (BrokerError, RedisConnectionError)):
        return f"the broker does not answer: {_first_line(exc)}"
    if (
        isinstance(exc, TransientError) and exc.code == "broker_unavailable"
    ):  # `after_commit.send_now` said so
        return _first_line(exc)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def print_error(message: str) -> None:
    """`error: <message>` on stderr, on one line whatever the terminal width, the message taken literally
    (a path, a tag or a URL with brackets is not console markup)."""
    Console(stderr=True).print(
        Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True
    )


def wide_console() -> Console:
    """Stdout for tables: piped output (files, CI logs) gets wide ones, so ids and URLs are not cut at 80."""
    return Console(width=None if sys.stdout.isatty() else 200)


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command: `error: <message>` on stderr, exit `code`."""
    print_error(message)
    raise typer.Exit(code)


def transaction() -> AbstractContextManager[Session]:
    """One committed unit of work (`cancelflow.db.transaction`, imported when a command needs it)."""
    from cancelflow.db import transaction as unit_of_work

    return unit_of_work()


@contextmanager
def failing_on(*errors: type[CancelflowError]) -> Iterator[None]:
    """One of `errors` from the block ends the command with its message, exit code 1."""
    try:
        yield
    except errors as exc:
        fail(exc.message)


@contextmanager
def refusing_invalid() -> Iterator[None]:
    """An `Invalid` from the block: its field errors, one line each, then the message, exit code 1."""
    from cancelflow.errors import Invalid

    try:
        yield
    except Invalid as exc:
        err = Console(stderr=True)
        for field, messages in exc.field_errors.items():
            err.print(f"  {field}: {'; '.join(messages)}", highlight=False, markup=False)
        fail(exc.message)


class GuardedGroup(TyperGroup):
    """The root command group: turns what `explain` knows into a clean error, whichever command raised it."""

    def invoke(self, ctx: Any) -> object:  # ctx: typer's own click Context
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = explain(exc)
            if message is None:
                raise
            print_error(message)
            raise typer.Exit(CONFIG_EXIT) from None
