"""No `cancelflow` command prints a traceback for a configuration or connection problem: one line, exit 2.

Every command of the CLI (found by walking the command tree, so a new one is covered too) is run with no
database configured and no running stack, then against a database that does not answer. A few run through
the real entry point as well, where an escaped exception would print typer's traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cancelflow.cli.main import app
from cancelflow.config import get_settings

# Arguments that get each command past its own usage checks to the point where it needs the database.
ARGS: dict[str, list[str]] = {
    "import": ["<example>"],
    "submit": ["--order-item", "1", "--reason", "1", "--wait", "5"],
    "approve": ["1"],
    "show": ["1"],
    "replay": ["--all-dead"],
    "tokens create": ["someone"],
    "tokens revoke": ["someone"],
    "escalations resolve": ["1", "--action", "wait"],
    "services set-policy": ["some-service", "--reminders", "2"],
    "tags bulk-add": ["vip", "--inline"],
    "tags bulk-remove": ["vip", "--inline"],
    "tags resume": ["00000000-0000-0000-0000-000000000001", "--inline"],
    "users create": ["someone", "--password", "a-long-password-1"],
    "users set-password": ["someone", "--password", "a-long-password-1"],
    "users set-permissions": ["someone"],
    "users deactivate": ["someone"],
    "webhooks add": ["https://example.com/hook", "--events", "request.completed"],
    "webhooks remove": ["1"],
    "webhooks attempts": ["1"],
    "webhooks redeliver": ["1"],
    "webhooks resume": ["1"],
    "export": ["-o", "<tmp>/out.csv"],
}
# Commands that start servers of their own when nothing is configured: only the "database down" case.
STARTS_SERVERS = {"run"}
# Commands that use only the broker (no database): their case is a broker that does not answer.
BROKER_ONLY = {"submit", "broker storefront-user"}
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "import.json"


def all_commands() -> list[str]:
    def walk(command: object, path: list[str]) -> Iterator[str]:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            yield " ".join(path)
            return
        if getattr(command, "invoke_without_command", False) and path:
            yield " ".join(path)
        for name, sub in subcommands.items():
            yield from walk(sub, [*path, name])

    return sorted(walk(typer.main.get_command(app), []))


def argv(command: str, tmp_path: Path) -> list[str]:
    args = [
        a.replace("<example>", str(EXAMPLE)).replace("<tmp>", str(tmp_path)) for a in ARGS.get(command, [])
    ]
    return [*command.split(), *args]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def fresh_caches() -> Iterator[None]:
    """Settings and engines are cached per process: start from the environment this test sets, and leave
    the next test its own."""
    from cancelflow.db import _session_factory, get_engine

    def clear() -> None:
        get_settings.cache_clear()
        get_engine.cache_clear()
        _session_factory.cache_clear()

    clear()
    yield
    clear()


def _assert_clean(command: str, result: object, expected: str) -> None:
    output = getattr(result, "output", "")
    exception = getattr(result, "exception", None)
    assert getattr(result, "exit_code", None) == 2, f"{command}: {output!r} {exception!r}"
    assert isinstance(exception, SystemExit), f"{command}: {exception!r}"
    assert "Traceback" not in output, output
    assert f"error: {expected}" in output, f"{command}: {output!r}"


@pytest.mark.timeout(300)
def test_every_command_without_a_database_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_caches: None
) -> None:
    monkeypatch.delenv("CANCELFLOW_DATABASE_URL", raising=False)
    monkeypatch.delenv("CANCELFLOW_BROKER_URL", raising=False)
    monkeypatch.setenv("CANCELFLOW_DATA_DIR", str(tmp_path / "no-stack-here"))
    runner = CliRunner()
    commands = [c for c in all_commands() if c not in STARTS_SERVERS]
    assert {"show", "submit", "tokens list", "webhooks deliveries", "migrate"} <= set(commands)
    for command in commands:
        result = runner.invoke(app, argv(command, tmp_path))
        _assert_clean(command, result, "CANCELFLOW_")
        assert "no `cancelflow run`" in result.output, f"{command}: {result.output!r}"


@pytest.mark.timeout(300)
def test_every_command_against_a_database_that_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_caches: None
) -> None:
    monkeypatch.setenv("CANCELFLOW_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere")
    monkeypatch.setenv("CANCELFLOW_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    for command in all_commands():
        if command in BROKER_ONLY:
            continue  # covered by the broker test below
        result = runner.invoke(app, argv(command, tmp_path))
        _assert_clean(command, result, "the database does not answer")


@pytest.mark.timeout(300)
def test_every_broker_command_against_a_broker_that_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_caches: None
) -> None:
    monkeypatch.setenv("CANCELFLOW_BROKER_URL", f"redis://127.0.0.1:{closed_port()}/0")
    monkeypatch.setenv("CANCELFLOW_DATA_DIR", str(tmp_path / "data"))
    # The process's Celery app may already hold a connection to a live broker (an earlier test's): the
    # commands get an app configured from this test's environment, as a new process would.
    from celery import Celery

    from cancelflow.worker.config import celery_config

    fresh = Celery("cancelflow-broker-down", set_as_current=False)
    fresh.conf.update(celery_config(get_settings()))
    monkeypatch.setattr("cancelflow.worker.app.celery_app", fresh)
    runner = CliRunner()
    assert set(all_commands()) >= BROKER_ONLY
    for command in sorted(BROKER_ONLY):
        result = runner.invoke(app, argv(command, tmp_path))
        _assert_clean(command, result, "the broker does not answer")


def _entry_point(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys; from cancelflow.cli.main import app; sys.argv[0] = 'cancelflow'; app()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _bare_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANCELFLOW_")}
    env.update(extra)
    return env


@pytest.mark.timeout(300)
def test_the_entry_point_prints_one_line_not_a_traceback(tmp_path: Path) -> None:
    # No configuration and no running stack (the new terminal of a user whose `make run` is elsewhere)
    shown = _entry_point(["show", "1"], _bare_env(), cwd=tmp_path)
    assert shown.returncode == 2, shown.stderr
    assert shown.stderr.count("\n") == 1, shown.stderr
    assert "CANCELFLOW_DATABASE_URL is not set" in shown.stderr
    assert str(tmp_path / ".cancelflow") in shown.stderr
    assert "Traceback" not in shown.stdout + shown.stderr

    # A broker that does not answer
    down = f"redis://127.0.0.1:{closed_port()}/0"
    submitted = _entry_point(
        ["submit", "--order-item", "1", "--reason", "1"],
        _bare_env(CANCELFLOW_BROKER_URL=down, CANCELFLOW_DATABASE_URL=os.environ["CANCELFLOW_DATABASE_URL"]),
        cwd=tmp_path,
    )
    assert submitted.returncode == 2, submitted.stderr
    assert "error: the broker does not answer" in submitted.stderr
    assert "Traceback" not in submitted.stdout + submitted.stderr

    # A setting that does not parse
    bad = _entry_point(["tokens", "list"], _bare_env(CANCELFLOW_API_PORT="eighty"), cwd=tmp_path)
    assert bad.returncode == 2, bad.stderr
    assert "error: invalid setting CANCELFLOW_API_PORT" in bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr


@pytest.mark.timeout(300)
def test_a_command_whose_follow_up_message_cannot_be_sent_says_so_in_one_line(tmp_path: Path) -> None:

    from tests.factories import new_request

    # Given a waiting request, and a broker that does not answer
    request_id = new_request().id
    env = _bare_env(
        CANCELFLOW_DATABASE_URL=os.environ["CANCELFLOW_DATABASE_URL"],
        CANCELFLOW_BROKER_URL=f"redis://127.0.0.1:{closed_port()}/0",
    )
    # When staff approve it: the approval commits, its routing message is left to the sweeper
    approved = _entry_point(["approve", str(request_id)], env, cwd=tmp_path)
    assert approved.returncode == 0, approved.stderr
    assert f"request {request_id} approved" in approved.stdout
    # Then the failed send is one warning line, not a traceback
    assert "Traceback" not in approved.stderr, approved.stderr
    assert "the sweeper will retry" in approved.stderr
    assert approved.stderr.count("\n") == 1, approved.stderr
