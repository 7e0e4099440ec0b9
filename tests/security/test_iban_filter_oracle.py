"""The `iban` filter confirms whether a guessed IBAN is on file (count 1 vs 0). Only staff tokens with
`view_iban` (who read IBANs anyway) may use it; any other token gets the same 403 whatever it guesses,
on the list, the detailed list, its exports and the tag lists, globally and on the channel twin."""

from __future__ import annotations

import secrets

import pytest
from fastapi.testclient import TestClient
from schwifty import IBAN

from cancelflow.db import transaction
from cancelflow.services import exports
from tests.factories import bank_transfer_request_over_api, token_headers

# An IBAN no other test stores, so that the match count is this module's own.
VALID_IBAN = str(
    IBAN.generate("DE", bank_code="37040044", account_code=str(secrets.randbelow(10**10)).zfill(10))
)

WRONG_IBAN = "GB29NWBK60161331926819"
PATHS = (
    "/api/v1/cancellation_requests/",
    "/api/v1/cancellation_requests/detailed/",
    "/api/v1/channel/1/cancellation_requests/",
    "/api/v1/channel/1/cancellation_requests/detailed/",
)
STAFF_ONLY_PATHS = (
    "/api/v1/cancellation_requests/filter_by_tags/?key=x",
    "/api/v1/cancellation_requests/exclude_by_tags/?key=x",
)


@pytest.fixture(scope="module")
def on_file(client: TestClient, database: str) -> int:
    return bank_transfer_request_over_api(client, token_headers("staff"), iban=VALID_IBAN)


def join(path: str, query: str) -> str:
    return path + ("&" if "?" in path else "?") + query


@pytest.mark.parametrize("kind", ["storefront", "staff"])
def test_a_token_without_view_iban_cannot_test_a_guess(client: TestClient, on_file: int, kind: str) -> None:
    headers = token_headers("storefront", channel_id=1) if kind == "storefront" else token_headers("staff")
    paths = PATHS + (STAFF_ONLY_PATHS if kind == "staff" else ())
    for path in paths:
        answers = []
        for guess in (VALID_IBAN, VALID_IBAN.lower(), WRONG_IBAN):
            response = client.get(join(path, f"iban={guess}"), headers=headers)
            answers.append((response.status_code, response.json()))
        # The same refusal for the right and the wrong guess: nothing to tell them apart.
        assert {status for status, _ in answers} == {403}, (path, answers)
        assert answers[0][1] == answers[2][1]
        assert "iban" in answers[0][1]["detail"]
        assert answers[0][1]["code"] == "permission_denied"
    for fmt in ("csv", "json", "xlsx"):
        response = client.get(join(PATHS[1], f"iban={VALID_IBAN}&export_format={fmt}"), headers=headers)
        assert response.status_code == 403, response.text


def test_view_iban_staff_still_filter_by_iban(client: TestClient, on_file: int) -> None:
    headers = token_headers("staff", permissions=["view_iban"])
    spaced = " ".join(VALID_IBAN[i : i + 4] for i in range(0, len(VALID_IBAN), 4)).lower()
    found = client.get(PATHS[0], params={"iban": spaced}, headers=headers).json()
    assert [r["id"] for r in found["results"]] == [on_file]
    assert client.get(PATHS[0], params={"iban": WRONG_IBAN}, headers=headers).json()["count"] == 0


def test_an_export_job_shows_its_iban_filter_masked_to_staff_without_view_iban(
    client: TestClient, on_file: int
) -> None:
    with transaction() as session:
        job = exports.create_job(session, exports.ExportFormat.csv, filters={"iban": VALID_IBAN})
        job_id = job.id
    plain = client.get(f"/api/v1/exports/{job_id}/", headers=token_headers("staff")).json()
    assert VALID_IBAN not in str(plain)
    assert plain["filters"]["iban"].endswith(VALID_IBAN[-4:])
    full = client.get(f"/api/v1/exports/{job_id}/", headers=token_headers("staff", permissions=["view_iban"]))
    assert full.json()["filters"]["iban"] == VALID_IBAN
