"""Exports of the detailed list (`export_format=csv|xlsx|json`): fields, filters, formats parsed back.

`api.exports.export_response` is what the detailed-list route returns when `export_format` is present;
it is mounted here on a bare app so these tests pin its contract, and one test goes through the route.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from typing import Annotated

import pytest
from fastapi import FastAPI, Query, Request, Response
from fastapi.testclient import TestClient
from sqlalchemy import text

from cancelflow.api import errors
from cancelflow.api.deps import DbSession
from cancelflow.api.exports import export_response
from cancelflow.db import transaction
from cancelflow.services.exports import FIELD_NAMES
from tests.api.test_tags import make_requests, unique
from tests.factories import token_headers

EXPORT = "/export/"


def export_app() -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.get(EXPORT)
    def export(request: Request, export_format: Annotated[str, Query()], session: DbSession) -> Response:
        from cancelflow.services.queries import RequestFilters

        return export_response(
            session, request, RequestFilters.parse(request.query_params.multi_items()), export_format
        )

    return app


@pytest.fixture(scope="module")
def client(database: str) -> Iterator[TestClient]:
    with TestClient(export_app()) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def dataset(database: str) -> dict[str, object]:
    """Three approved requests (one with IBAN, tags and a plan) and one waiting, under one email."""
    email = f"{unique('exp')}@example.com"
    approved = make_requests(3, status="approved", email=email)
    waiting = make_requests(1, status="waiting", email=email)
    first = approved[0]
    with transaction() as session:
        session.execute(
            text(
                "UPDATE cancellation_requests SET iban = 'TR330006100519786457841326', holder_name = 'Ayşe "
                "Yılmaz', fully_refund_as_loyalty_money = true WHERE id = :id"
            ),
            {"id": first},
        )
        session.execute(
            text(
                "INSERT INTO cancellation_plans (request_id, status, plan_type, amount, currency, refund_target, "
                "version) VALUES (:id, 'completed', 'cancel', 49.90, 'try', 'bank_transfer', 1)"
            ),
            {"id": first},
        )
        from cancelflow.services import tags

        tags.add(session, first, ["b-tag", "a,tag"])
    return {"email": email, "approved": approved, "waiting": waiting}


def rows_by_id(rows: list[dict[str, object]]) -> dict[int, dict[str, object]]:
    return {int(str(r["id"])): r for r in rows}


class TestCsv:
    def test_fields_filters_and_values(self, client: TestClient, dataset: dict[str, object]) -> None:
        response = client.get(
            EXPORT, params={"export_format": "csv", "email": dataset["email"], "status": "approved"}
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        reader = csv.DictReader(io.StringIO(response.text))
        assert tuple(reader.fieldnames or ()) == FIELD_NAMES
        rows = list(reader)
        assert [int(r["id"]) for r in rows] == dataset["approved"]  # id order, waiting filtered out
        first = rows_by_id(rows)[dataset["approved"][0]]  # type: ignore[index]
        assert first["iban_masked"] == "TR" + "*" * 20 + "1326"  # as the API masks it (iban.mask)
        assert first["holder_name"] == "Ayşe Yılmaz"
        assert first["fully_refund_as_loyalty_money"] == "true"
        assert (first["plan_status"], first["plan_amount"], first["currency"]) == (
            "completed",
            "49.90",
            "try",
        )
        assert first["refund_target"] == "bank_transfer"
        assert first["tags"] == "a,tag|b-tag"
        assert first["status"] == "approved"
        assert str(first["created_date"]).endswith("Z")
        uuid.UUID(str(first["uuid"]))
        other = rows_by_id(rows)[dataset["approved"][1]]  # type: ignore[index]
        assert (other["plan_status"], other["iban_masked"], other["tags"]) == ("", "", "")
        assert other["fully_refund_as_loyalty_money"] == "false"

    def test_empty_selection_has_a_header_only(self, client: TestClient) -> None:
        response = client.get(EXPORT, params={"export_format": "csv", "email": "nobody@example.invalid"})
        assert response.status_code == 200
        assert response.text.strip() == ",".join(FIELD_NAMES)


class TestJson:
    def test_typed_values(self, client: TestClient, dataset: dict[str, object]) -> None:
        response = client.get(EXPORT, params={"export_format": "JSON", "email": dataset["email"]})
        assert response.status_code == 200, response.text
        rows = json.loads(response.content)
        assert [r["id"] for r in rows] == [*dataset["approved"], *dataset["waiting"]]  # type: ignore[misc]
        first = rows[0]
        assert list(first) == list(FIELD_NAMES)
        assert first["tags"] == ["a,tag", "b-tag"]
        assert first["fully_refund_as_loyalty_money"] is True
        assert first["quantity"] == 1
        assert rows[1]["tags"] == []

    def test_empty_is_an_empty_array(self, client: TestClient) -> None:
        response = client.get(EXPORT, params={"export_format": "json", "email": "nobody@example.invalid"})
        assert json.loads(response.content) == []


class TestXlsx:
    def test_workbook_reads_back(self, client: TestClient, dataset: dict[str, object]) -> None:
        response = client.get(EXPORT, params={"export_format": "xlsx", "email": dataset["email"]})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/vnd.openxmlformats")
        assert zipfile.is_zipfile(io.BytesIO(response.content))
        import openpyxl

        sheet = openpyxl.load_workbook(io.BytesIO(response.content), read_only=True).active
        assert sheet is not None
        rows = [list(r) for r in sheet.iter_rows(values_only=True)]
        assert tuple(rows[0]) == FIELD_NAMES
        assert [int(str(r[0])) for r in rows[1:]] == [*dataset["approved"], *dataset["waiting"]]  # type: ignore[misc]
        assert rows[1][FIELD_NAMES.index("tags")] == "a,tag|b-tag"


class TestErrors:
    def test_unknown_format_is_400(self, client: TestClient) -> None:
        response = client.get(EXPORT, params={"export_format": "xls"})
        assert response.status_code == 400
        assert response.json() == {"export_format": ['"xls" is not a valid choice.'], "code": "invalid"}

    def test_bad_filter_is_400(self, client: TestClient) -> None:
        response = client.get(EXPORT, params={"export_format": "csv", "status": "nope"})
        assert response.status_code == 400
        assert "status" in response.json()


class TestCli:
    def test_export_to_file(self, dataset: dict[str, object], tmp_path: object) -> None:
        from pathlib import Path

        from typer.testing import CliRunner

        from cancelflow.cli.main import app

        out = Path(str(tmp_path)) / "out.csv"
        result = CliRunner().invoke(
            app,
            [
                "export",
                "--format",
                "csv",
                "--filter",
                f"email={dataset['email']}",
                "-f",
                "status=waiting",
                "-o",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output
        rows = list(csv.DictReader(io.StringIO(out.read_text())))
        assert [int(r["id"]) for r in rows] == dataset["waiting"]


class TestExportJobAccess:
    """A storefront whose export became a job can follow the URL of its 202; nobody else's."""

    def test_storefront_sees_its_channel_jobs_only(self, database: str) -> None:
        from cancelflow.api.app import create_app
        from cancelflow.models import ExportFormat
        from cancelflow.services import exports

        # Given an export job started through channel 1's twin route
        with transaction() as session:
            job_id = exports.create_job(session, ExportFormat.csv, filters={}, channel_id=1, total=5).id
        url = f"/api/v1/exports/{job_id}/"
        with TestClient(create_app()) as api:
            # Then channel 1's storefront and staff read it; the file is not ready yet (409)
            own = api.get(url, headers=token_headers("storefront", channel_id=1))
            assert own.status_code == 200, own.text
            assert own.json()["status"] == "pending"
            assert api.get(url, headers=token_headers("staff")).status_code == 200
            assert (
                api.get(f"{url}download/", headers=token_headers("storefront", channel_id=1)).status_code
                == 409
            )
            # And another channel's storefront does not find it
            other = api.get(url, headers=token_headers("storefront", channel_id=2))
            assert other.status_code == 404
            assert (
                api.get(f"{url}download/", headers=token_headers("storefront", channel_id=2)).status_code
                == 404
            )
