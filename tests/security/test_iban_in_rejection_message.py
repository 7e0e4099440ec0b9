"""An invalid IBAN is refused with a fixed reason: no reader (storefront, staff without `view_iban`,
the API error body, the stored row) ever gets the IBAN back from the refusal text."""

from __future__ import annotations

import re
import secrets

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from cancelflow.db import transaction
from cancelflow.services import intake
from tests.factories import new_order, token_headers, upgrade_once

# Each is refused for a different schwifty reason; every schwifty message for them quoted the input.
BAD_IBANS = [
    "DE89-3704-0044-0532-0130-00",  # characters: "Invalid characters in IBAN DE89-3704-…"
    "de89 3704 0044 0532 0130 01",  # check digits
    "GB29NW1K60161331926819",  # BBAN structure: "Invalid BBAN structure: 'NW1K60161331926819' …"
    "XX89370400440532013000",  # country
]


def digits_of(value: str) -> str:
    return re.sub(r"[^0-9]", "", value)


def leaks(value: str, text_: str) -> bool:
    """Whether `text_` carries the IBAN or any 8-digit run of its account number, in any spelling."""
    compact = re.sub(r"[^0-9A-Za-z]", "", text_).upper()
    number = digits_of(value)
    return re.sub(r"[^0-9A-Za-z]", "", value).upper() in compact or any(
        number[i : i + 8] in digits_of(text_) for i in range(len(number) - 7)
    )


@pytest.mark.parametrize("bad", BAD_IBANS)
def test_storefront_message_with_a_bad_iban_is_rejected_without_quoting_it(
    client: TestClient, bad: str
) -> None:
    order = new_order(method="bank_transfer")
    with transaction() as session:
        result = intake.submit(
            session,
            {
                "client_request_id": secrets.token_hex(8),
                "order_item": order.item_id,
                "reason": 1,
                "iban": bad,
                "holder_name": "Max Mustermann",
            },
        )
        request_id = result.request.id
    assert result.request.rejection_code == "invalid_iban"
    assert result.request.rejection_message.startswith("IBAN is invalid: ")
    assert not leaks(bad, result.request.rejection_message), result.request.rejection_message
    for headers in (token_headers("storefront", channel_id=1), token_headers("staff")):
        for path in (f"{request_id}/", f"{request_id}/detailed/"):
            response = client.get(f"/api/v1/cancellation_requests/{path}", headers=headers)
            assert response.status_code == 200, response.text
            assert not leaks(bad, response.text), response.text


@pytest.mark.parametrize("bad", BAD_IBANS)
def test_api_refusal_of_a_bad_iban_does_not_echo_it(client: TestClient, bad: str) -> None:
    order = new_order(method="bank_transfer")
    body = {"order_item": order.item_id, "reason": 1, "iban": bad, "holder_name": "Max"}
    for headers in (token_headers("storefront", channel_id=1), token_headers("staff")):
        response = client.post("/api/v1/cancellation_requests/", headers=headers, json=body)
        assert response.status_code == 400, response.text
        assert "iban" in response.json()
        assert not leaks(bad, response.text), response.text


def test_stored_refusals_that_quote_the_iban_are_rewritten(database: str) -> None:
    """Rows written before the fix: the migration keeps the reason and drops the IBAN."""
    order = new_order(method="bank_transfer")
    old = {
        "IBAN is invalid: Invalid characters in IBAN DE89-3704-0044-0532-0130-00": (
            "IBAN is invalid: only letters, digits and spaces are allowed"
        ),
        "IBAN is invalid: Invalid BBAN structure: '370400440532013000' doesn't match '8!n10!n'": (
            "IBAN is invalid: does not match its country's format"
        ),
        "IBAN is invalid: wrong check digits": "IBAN is invalid: wrong check digits",
    }
    ids: dict[str, int] = {}
    with transaction() as session:
        for message in old:
            ids[message] = session.execute(
                text(
                    "INSERT INTO cancellation_requests (uuid, order_item_id, order_id, channel_id, reason_id, "
                    "cancellation_type, status, quantity, fully_refund_as_loyalty_money, client_request_id, "
                    "rejection_code, rejection_message, attributes, version) VALUES (gen_random_uuid(), :item, :order, 1, "
                    "1, 'cancel', 'rejected', 1, false, :cid, 'invalid_iban', :message, '{}', 1) RETURNING id"
                ),
                {
                    "item": order.item_id,
                    "order": order.id,
                    "cid": secrets.token_hex(8),
                    "message": message,
                },
            ).scalar_one()
    upgrade_once("20261130_scrub_iban_rejections")
    with transaction() as session:
        for message, expected in old.items():
            stored = session.execute(
                text("SELECT rejection_message FROM cancellation_requests WHERE id = :id"),
                {"id": ids[message]},
            ).scalar_one()
            assert stored == expected


def test_a_rejection_message_written_elsewhere_is_masked_for_readers_without_view_iban(
    client: TestClient,
) -> None:
    """A fulfillment service's rejection message is its own text: shown, with IBANs and e-mails masked."""
    order = new_order(method="bank_transfer")
    with transaction() as session:
        result = intake.submit(
            session,
            {"client_request_id": secrets.token_hex(8), "order_item": order.item_id, "reason": 1},
        )
        result.request.rejection_message = (
            "Already shipped to the account de89 3704 0044 0532 0130 00; ask max.geheim@example.org"
        )
        request_id = result.request.id
    for headers in (token_headers("storefront", channel_id=1), token_headers("staff")):
        shown = client.get(f"/api/v1/cancellation_requests/{request_id}/", headers=headers).json()
        assert shown["rejection_message"].startswith("Already shipped")
        assert not leaks("DE89370400440532013000", shown["rejection_message"])
        assert "max.geheim@" not in shown["rejection_message"]
    full = client.get(
        f"/api/v1/cancellation_requests/{request_id}/",
        headers=token_headers("staff", permissions=["view_iban"]),
    ).json()
    assert "max.geheim@example.org" in full["rejection_message"]
