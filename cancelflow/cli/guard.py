"""Every `cancelflow` command: a configuration or connection problem is one line on stderr and exit code 2.

A traceback is for a bug. Settings that do not parse, no database or broker to use, a database or broker that
does not answer, a database without the schema: each is something the user fixes from the message alone.
"""

from __future__ import annotations

from typing import Any, Final

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

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
    if isinstance(exc, TransientError) and exc.code == "broker_unavailable":  # `after_commit.send_now` said so
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
