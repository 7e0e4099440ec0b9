"""Imports and demo data never silently repoint or re-key a fulfillment service a running stack relies on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from cancelflow.cli import run as run_mod
from cancelflow.cli.main import app
from cancelflow.config import Settings
from cancelflow.db import transaction
from cancelflow.errors import Invalid
from cancelflow.models import FulfillmentService
from cancelflow.models.enums import PlanStatus
from cancelflow.services.importer import import_payload
from tests.factories import routed_plan, service_payload
from tests.harness import printed_counts

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "import.json"


def plan_in_flight(session: Session, svc: dict[str, Any]) -> None:
    """A request whose fulfillment order at `svc` was asked to cancel: the plan waits for its reply."""
    plan = routed_plan(session, svc)
    assert plan.status == PlanStatus.confirmation_waiting


class TestServiceWithRequestsInFlight:
    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("secret", "another-secret-entirely"),
            ("callback_url", "https://elsewhere.example.com/hook"),
            ("handle", "renamed-service"),
        ],
    )
    def test_changing_its_identity_is_refused_and_writes_nothing(
        self, session: Session, field: str, value: str
    ) -> None:
        # Given a service with a request waiting for its reply
        svc = service_payload()
        plan_in_flight(session, svc)
        # When an import changes its secret, callback URL or handle
        changed = {**svc, field: value}
        with pytest.raises(Invalid) as info:
            import_payload(session, {"fulfillment_services": [changed]})
        # Then it is refused, naming the field and the reason, and the service is as it was
        [message] = info.value.field_errors[f"fulfillment_services.0.{field}"]
        assert "still running" in message
        assert "replace_services" in message
        stored = session.get_one(FulfillmentService, svc["id"])
        session.refresh(stored)
        assert (stored.handle, stored.secret, stored.callback_url) == (
            svc["handle"],
            svc["secret"],
            svc["callback_url"],
        )

    def test_replace_services_changes_it_anyway(self, session: Session) -> None:
        svc = service_payload()
        plan_in_flight(session, svc)
        import_payload(
            session, {"fulfillment_services": [{**svc, "secret": "rotated-secret-1"}]}, replace_services=True
        )
        assert session.get_one(FulfillmentService, svc["id"]).secret == "rotated-secret-1"

    def test_the_same_service_again_and_its_reply_policy_still_import(self, session: Session) -> None:
        svc = service_payload()
        plan_in_flight(session, svc)
        counts = import_payload(session, {"fulfillment_services": [svc]})
        assert counts["fulfillment_services"] == 0
        policy = {**svc["reply_policy"], "reminder_count": 7}
        assert (
            import_payload(session, {"fulfillment_services": [{**svc, "reply_policy": policy}]})[
                "fulfillment_services"
            ]
            == 1
        )

    def test_a_service_without_requests_in_flight_may_change(self, session: Session) -> None:
        svc = service_payload()
        import_payload(session, {"fulfillment_services": [svc]})
        import_payload(session, {"fulfillment_services": [{**svc, "secret": "a-new-secret-42"}]})
        assert session.get_one(FulfillmentService, svc["id"]).secret == "a-new-secret-42"


def test_a_handle_of_another_service_is_a_field_error_not_a_database_error(session: Session) -> None:
    first = service_payload()
    import_payload(session, {"fulfillment_services": [first]})
    clash = {**service_payload(), "handle": first["handle"]}
    with pytest.raises(Invalid) as info:
        import_payload(session, {"fulfillment_services": [clash]})
    assert info.value.field_errors == {
        "fulfillment_services.0.handle": [f"handle already used by fulfillment service {first['id']}"]
    }


# --------------------------------------------------------------------------------------------------
# `cancelflow demo` and the example file against the services `cancelflow run` made (committed data)
# --------------------------------------------------------------------------------------------------


def _runs_services(tmp_path: Path, database: str) -> dict[str, Any]:
    """The data `cancelflow run` loads (its credentials file under tmp_path), returned as its credentials."""
    creds = run_mod.load_or_create_credentials(tmp_path / run_mod.CREDENTIALS_FILE)
    run_mod.load_demo_and_tokens(database, creds, Settings(data_dir=tmp_path))
    return creds


def _stored_services() -> dict[str, tuple[int, str, str]]:
    with transaction() as session:
        return {
            s.handle: (s.id, s.secret, s.callback_url)
            for s in session.scalars(
                select(FulfillmentService).where(FulfillmentService.handle.in_(run_mod.SANDBOX_SERVICES))
            )
        }


def test_demo_and_example_import_leave_a_running_stacks_services_alone(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cancelflow.config import get_settings

    # Given the services and secrets of a running `cancelflow run`
    creds = _runs_services(tmp_path, database)
    before = _stored_services()
    assert {h: v[1] for h, v in before.items()} == {h: creds["services"][h]["secret"] for h in before}

    # When `cancelflow demo` loads its data again (twice), with the run's data dir or without it
    monkeypatch.setenv("CANCELFLOW_DATA_DIR", str(tmp_path / "elsewhere"))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        for _ in range(2):
            result = runner.invoke(app, ["demo"])
            assert result.exit_code == 0, result.output
            # Then nothing is written the second time round, the services included
            assert printed_counts(result.output)["fulfillment_services"] == 0, result.output
            assert _stored_services() == before

        # And the example file creates its own service rather than taking over one of them
        imported = runner.invoke(app, ["import", str(EXAMPLE)])
        assert imported.exit_code == 0, imported.output
    finally:
        get_settings.cache_clear()
    assert _stored_services() == before
    example = json.loads(EXAMPLE.read_text())
    with transaction() as session:
        for svc in example["fulfillment_services"]:
            assert session.get_one(FulfillmentService, svc["id"]).handle == svc["handle"]


def test_demo_into_a_run_whose_sandbox_is_on_another_port(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cancelflow.config import get_settings

    # Given a running `cancelflow run` whose sandbox listens on a port this shell's settings do not name
    creds = run_mod.load_or_create_credentials(tmp_path / run_mod.CREDENTIALS_FILE)
    run_mod.load_demo_and_tokens(
        database, creds, Settings(data_dir=tmp_path, sandbox_fulfillment_port=18_101)
    )
    before = _stored_services()
    assert all(":18101/" in url for _, _, url in before.values()), before

    # When `cancelflow demo` is run from another terminal (default settings: sandbox port 8101)
    monkeypatch.delenv("CANCELFLOW_SANDBOX_FULFILLMENT_PORT", raising=False)
    monkeypatch.setenv("CANCELFLOW_OUTBOUND_ALLOW", "")
    monkeypatch.setenv("CANCELFLOW_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["demo"])
    finally:
        get_settings.cache_clear()

    # Then the services it keeps as they are do not make the import refuse their (unchanged) callback URLs
    assert result.exit_code == 0, result.output
    assert printed_counts(result.output)["fulfillment_services"] == 0, result.output
    assert _stored_services() == before
