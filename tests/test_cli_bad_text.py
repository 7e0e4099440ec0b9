"""The CLI and the file import refuse text PostgreSQL cannot store, naming it, with no traceback.

On a POSIX system an argument byte that is not UTF-8 reaches Python as a lone surrogate (PEP 383); NUL
cannot be in argv but can in a JSON file's `\\u0000`. Every command of the tree gets such an argument.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from cancelflow.cli.main import app
from tests.api.test_bad_text import row_counts
from tests.factories import order_payload
from tests.harness import repeatable_examples

runner = CliRunner()


def said(output: str) -> str:
    """The output as one line: rich's error box wraps and frames messages."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def command_paths() -> list[tuple[str, ...]]:
    """Every runnable command of the `cancelflow` tree, as the words that name it."""
    paths: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, (*path, name))
        else:
            paths.append(path)

    walk(typer.main.get_command(app), ())
    return paths


PATHS = command_paths()
BAD = st.builds(
    lambda a, c, b: a + c + b,
    st.text(max_size=5),
    st.one_of(st.just("\x00"), st.characters(categories=["Cs"])),
    st.text(max_size=5),
)


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) for p in PATHS])
def test_every_command_refuses_an_argument_that_cannot_be_stored(path: tuple[str, ...]) -> None:
    before = row_counts()

    @repeatable_examples(3)
    @given(value=BAD, as_option=st.booleans())
    def check(value: str, as_option: bool) -> None:
        args = [*path, f"--name={value}"] if as_option else [*path, value]
        result = runner.invoke(app, args)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert result.exit_code == 2, result.output
        assert ("--name" if as_option else f"argument {len(args)}") in said(result.output)
        assert "characters are not allowed" in said(result.output)

    check()
    assert row_counts() == before


def test_the_tree_has_the_commands_that_store_text() -> None:
    assert {("import",), ("submit",), ("tags", "bulk-add"), ("users", "create"), ("webhooks", "add")} <= set(
        PATHS
    )


def test_import_file_with_a_nul_names_the_field_and_stores_nothing(tmp_path: Path) -> None:
    order = order_payload()
    order["items"][0]["product_name"] = "bad\x00name"
    order["number"] = "T\ud800"
    path = tmp_path / "import.json"
    path.write_text(json.dumps({"orders": [order]}))  # ASCII: \u0000 and \ud800 escapes, as JSON has them
    before = row_counts()
    result = runner.invoke(app, ["import", str(path)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "orders.0.items.0.product_name: Null characters are not allowed." in result.output
    assert "orders.0.number: Surrogate characters are not allowed: U+D800." in result.output
    assert row_counts() == before


def test_import_file_that_is_not_utf8_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "import.json"
    path.write_bytes(b'{"orders": [{"number": "\xff"}]}')
    result = runner.invoke(app, ["import", str(path)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "is not UTF-8 text" in result.output


def test_password_prompt_asks_again_for_text_that_cannot_be_stored() -> None:
    import uuid

    from cancelflow.db import transaction
    from cancelflow.services.users import get_by_username

    name = f"prompt-{uuid.uuid4().hex[:8]}"
    result = runner.invoke(
        app, ["users", "create", name], input="bad\x00pass\nbad\x00pass\ngood-pass-123\ngood-pass-123\n"
    )
    assert result.exit_code == 0, result.output
    assert "Null characters are not allowed." in result.output
    with transaction() as session:
        assert get_by_username(session, name) is not None
