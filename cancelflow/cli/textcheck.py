"""Command-line text PostgreSQL cannot store is refused before any command runs.

A byte that is not UTF-8 in an argument reaches Python as a lone surrogate (PEP 383): such an argument is
a usage error (exit 2) that names it, checked once by the root command group for every subcommand.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from cancelflow import textcheck


def bad_argument(args: list[str]) -> str | None:
    """A usage message for the first argument that cannot be stored, or None."""
    for position, arg in enumerate(args, start=1):
        message = textcheck.problem(arg)
        if message is None:
            continue
        option, sep, value = arg.partition("=")
        if sep and option.startswith("--") and textcheck.problem(option) is None:
            return f"{option} '{textcheck.storable(value)}': {message}"
        return f"argument {position} '{textcheck.storable(arg)}': {message}"
    return None


class TextCheckedGroup(TyperGroup):
    """The root `cancelflow` group: every argument of every subcommand passes through here first."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: typer's own click Context
        message = bad_argument(args)
        if message is not None:
            raise typer.BadParameter(message, ctx=ctx)  # a usage error: exit status 2
        result: list[str] = super().parse_args(ctx, args)
        return result


def checked_prompt(text: str, **kwargs: Any) -> str:
    """`typer.prompt` that asks again while the answer holds text that cannot be stored."""
    while True:
        answer = str(typer.prompt(text, **kwargs))
        message = textcheck.problem(answer)
        if message is None:
            return answer
        typer.echo(f"Error: {message}", err=True)
