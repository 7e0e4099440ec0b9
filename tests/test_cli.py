"""The operator CLI, in-process against the real database."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cancelflow.cli.main import app
from tests.factories import new_request
from tests.harness import printed_counts

runner = CliRunner()
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "import.json"


def test_import_example_file_twice_changes_nothing_the_second_time() -> None:
    first = runner.invoke(app, ["import", str(EXAMPLE)])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["import", str(EXAMPLE)])
    assert second.exit_code == 0, second.output
    assert printed_counts(second.output)
    assert set(printed_counts(second.output).values()) == {0}


def test_import_reports_field_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"orders": [{"id": 1}]}))
    result = runner.invoke(app, ["import", str(bad)])
    assert result.exit_code == 1
    assert "orders.0.number" in result.output


def test_import_rejects_non_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = runner.invoke(app, ["import", str(bad)])
    assert result.exit_code == 1
    assert "not valid JSON" in result.output


def test_demo_is_deterministic() -> None:
    first = runner.invoke(app, ["demo", "--orders", "5"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["demo", "--orders", "5"])
    assert set(printed_counts(again.output).values()) == {0}


def test_approve_a_waiting_request_and_refuse_twice() -> None:
    from cancelflow.db import transaction
    from cancelflow.models import CancellationPlan

    request_id = new_request().id
    result = runner.invoke(app, ["approve", str(request_id), "--actor", "alice"])
    assert result.exit_code == 0, result.output
    with transaction() as session:
        assert session.query(CancellationPlan).filter_by(request_id=request_id).count() == 1
    again = runner.invoke(app, ["approve", str(request_id)])
    assert again.exit_code == 1
    assert "only a waiting request" in again.output
    shown = runner.invoke(app, ["show", str(request_id)])
    assert shown.exit_code == 0
    assert "approved" in shown.output


def test_tokens_create_list_revoke() -> None:
    name = f"ops-{secrets.token_hex(4)}"
    created = runner.invoke(app, ["tokens", "create", name, "--kind", "staff"])
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]
    assert len(key) == 40
    listed = runner.invoke(app, ["tokens", "list"])
    assert name in listed.output
    assert key not in listed.output
    assert runner.invoke(app, ["tokens", "revoke", name]).exit_code == 0
    assert runner.invoke(app, ["tokens", "revoke", name]).exit_code == 1


def test_an_error_is_one_literal_line_whatever_it_quotes(tmp_path: Path) -> None:
    # A long path: the message stays on one line, however narrow the terminal
    deep = tmp_path / ("d" * 60) / "bad.json"
    deep.parent.mkdir()
    deep.write_text("{not json")
    result = runner.invoke(app, ["import", str(deep)], terminal_width=60)
    assert result.exit_code == 1
    assert f"error: {deep} is not valid JSON" in result.output.splitlines()[0]
    # A name that looks like console markup is printed as typed, not parsed (a closing tag broke it)
    for name in ("[/bold]", "[red]x"):
        revoked = runner.invoke(app, ["tokens", "revoke", name])
        assert revoked.exit_code == 1, revoked.output
        assert revoked.output.strip() == f"error: no active token named {name!r}", revoked.output


def test_show_prints_one_snapshot_of_a_request_that_moves_on_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cancelflow.db import transaction
    from cancelflow.models import Event
    from cancelflow.services import step_view

    request_id = new_request().id
    assert runner.invoke(app, ["approve", str(request_id)]).exit_code == 0

    # While `show` is printing (after the request's status line), another transaction records a new event
    real_steps_of = step_view.steps_of

    def steps_then_a_change(session: object, ids: object) -> object:
        found = real_steps_of(session, ids)  # type: ignore[arg-type]
        with transaction() as other:
            other.add(Event(entity="request", entity_id=request_id, kind="request.moved_on", data={}))
        return found

    monkeypatch.setattr(step_view, "steps_of", steps_then_a_change)
    shown = runner.invoke(app, ["show", str(request_id)])
    assert shown.exit_code == 0, shown.output
    # Then what it prints is the request as it was when it started: not half old, half new
    assert "request.moved_on" not in shown.output
    assert "request.approved" in shown.output


def test_users_deactivate_ends_logins_and_revokes_every_token() -> None:
    from cancelflow.db import transaction
    from cancelflow.errors import Invalid
    from cancelflow.services import tokens, users
    from cancelflow.services.throttle import Throttle

    name = f"leaver-{secrets.token_hex(4)}"
    password = "correct horse battery"
    throttle = Throttle.from_uri("memory://")
    assert runner.invoke(app, ["users", "create", name, "--password", password]).exit_code == 0
    with transaction() as session:
        keys = [
            users.login(session, name, password, client="203.0.113.7", throttle=throttle)[1] for _ in "ab"
        ]
    with transaction() as session:
        assert all(tokens.authenticate(session, key) is not None for key in keys)

    result = runner.invoke(app, ["users", "deactivate", name])

    assert result.exit_code == 0, result.output
    assert "deactivated" in result.output
    with transaction() as session:
        assert [tokens.authenticate(session, key) for key in keys] == [None, None]
        assert users.get_by_username(session, name).is_active is False  # type: ignore[union-attr]
        with pytest.raises(Invalid):
            users.login(session, name, password, client="203.0.113.7", throttle=throttle)


def test_users_deactivate_an_unknown_user_fails() -> None:
    result = runner.invoke(app, ["users", "deactivate", f"nobody-{secrets.token_hex(4)}"])
    assert result.exit_code == 1
    assert "no user named" in result.output


def test_escalations_lists_the_oldest_first_up_to_the_limit() -> None:
    from datetime import UTC, datetime

    from sqlalchemy import update

    from cancelflow.db import transaction
    from cancelflow.models import CancellationPlan

    ids = [new_request().id for _ in range(3)]
    for n, request_id in enumerate(ids):
        assert runner.invoke(app, ["approve", str(request_id)]).exit_code == 0
        with transaction() as session:  # escalated long before anything else in this database
            session.execute(
                update(CancellationPlan)
                .where(CancellationPlan.request_id == request_id)
                .values(status="confirmation_waiting", escalated_at=datetime(2000, 1, 1 + n, tzinfo=UTC))
            )

    def listed(*argv: str) -> tuple[list[str], str]:
        result = runner.invoke(app, ["escalations", *argv])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        rows = [line.split("│")[1].strip() for line in lines if line.count("│") > 2]
        return [r for r in rows if r.isdigit()], " ".join(result.output.split("┘")[-1].split())

    rows, footer = listed("--limit", "2")
    assert rows == [str(i) for i in ids[:2]]
    assert "the oldest 2 of" in footer
    rows, footer = listed("--limit", "0")
    assert rows[:3] == [str(i) for i in ids]
    assert "shown" not in footer
