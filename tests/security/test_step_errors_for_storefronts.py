"""Remote error bodies and exception texts recorded on steps and plans (`last_error`,
`failure_reason`) are internals: a storefront token reading `/detailed/` sees the status only; staff see
the text, with IBANs and e-mail addresses masked unless the token has `view_iban`."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cancelflow.db import transaction
from cancelflow.models import CancellationRequest, WorkflowStep
from cancelflow.services import approval, steps
from tests.factories import VALID_IBAN, bank_transfer_request_over_api, token_headers

REMOTE_BODY = (
    'TransientError: gateway answered 502: {"trace": "pg-primary-3.internal:5432 timeout", '
    f'"account": "{VALID_IBAN}", "contact": "ops.oncall@bank.example"}}'
)


@pytest.fixture(scope="module")
def failed_request(client: TestClient) -> int:
    """A bank-transfer request whose first step failed once, then for good (its plan failed)."""
    request_id = bank_transfer_request_over_api(client, token_headers("staff"))
    with transaction() as session:
        plan = approval.approve(session, session.get_one(CancellationRequest, request_id), actor="test")
        step_id = session.scalars(
            select(WorkflowStep.id).where(WorkflowStep.plan_id == plan.id).order_by(WorkflowStep.id)
        ).first()
        assert step_id is not None
        steps.record_failure(session, step_id, REMOTE_BODY, permanent=False)
    with transaction() as session:
        steps.record_failure(session, step_id, REMOTE_BODY, permanent=True)
    return request_id


def detailed(client: TestClient, request_id: int, headers: dict[str, str]) -> dict[str, Any]:
    response = client.get(f"/api/v1/cancellation_requests/{request_id}/detailed/", headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_storefront_sees_step_status_not_remote_error_bodies(
    client: TestClient, failed_request: int
) -> None:
    shown = detailed(client, failed_request, token_headers("storefront", channel_id=1))
    plan = shown["plan"]
    assert plan["status"] == "failed"
    assert plan["failure_reason"] is None
    assert any(s["status"] == "dead" for s in plan["steps"])
    assert all(s["last_error"] is None for s in plan["steps"])
    raw = str(shown)
    for internal in ("pg-primary-3", "gateway answered", "ops.oncall", VALID_IBAN):
        assert internal not in raw


def test_staff_see_the_error_with_personal_data_masked_unless_view_iban(
    client: TestClient, failed_request: int
) -> None:
    plan = detailed(client, failed_request, token_headers("staff"))["plan"]
    errors = [s["last_error"] for s in plan["steps"] if s["last_error"]]
    assert errors
    assert all("pg-primary-3" in e for e in errors)
    assert "pg-primary-3" in plan["failure_reason"]
    for text in (*errors, plan["failure_reason"]):
        assert VALID_IBAN not in text
        assert "ops.oncall@" not in text
    full = detailed(client, failed_request, token_headers("staff", permissions=["view_iban"]))["plan"]
    assert any(VALID_IBAN in (s["last_error"] or "") for s in full["steps"])


def test_a_storefront_sees_that_its_export_failed_not_why(client: TestClient, failed_request: int) -> None:
    from cancelflow.services import exports

    with transaction() as session:
        job = exports.create_job(session, exports.ExportFormat.csv, filters={}, channel_id=1)
        exports.fail_job(session, job.id, REMOTE_BODY)
        job_id = job.id
    shown = client.get(f"/api/v1/exports/{job_id}/", headers=token_headers("storefront", channel_id=1))
    assert shown.status_code == 200, shown.text
    assert shown.json()["status"] == "failed"
    assert shown.json()["error"]
    for internal in ("pg-primary-3", "gateway answered", "ops.oncall", VALID_IBAN):
        assert internal not in shown.text
    staff = client.get(f"/api/v1/exports/{job_id}/", headers=token_headers("staff")).json()
    assert "pg-primary-3" in staff["error"]
    assert VALID_IBAN not in staff["error"]
