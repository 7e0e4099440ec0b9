"""Every `Idempotency-Key` the API accepts (1-200 visible ASCII characters) works: a long key used to be
joined to the token id into a `client_request_id` over its 200 characters, and the POST was refused with a
400 about a field the client never sent. Errors about the key name the header."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cancelflow.db import transaction
from cancelflow.models import CancellationRequest
from tests.api.test_cancellation_requests import new_order

BASE = "/api/v1/cancellation_requests/"


def key_of(length: int) -> str:
    return (uuid.uuid4().hex * 8)[:length]


@pytest.mark.parametrize("length", [1, 150, 190, 195, 200])
def test_every_allowed_key_length_creates_once(
    client: TestClient, staff: dict[str, str], length: int
) -> None:
    order = new_order()
    headers = {**staff, "Idempotency-Key": key_of(length)}
    payload = {"order_item": order.item_id, "reason": 1, "quantity": 1}
    first = client.post(BASE, headers=headers, json=payload)
    assert first.status_code == 201, first.text
    again = client.post(BASE, headers=headers, json=payload)
    assert (again.status_code, again.json()) == (201, first.json())
    with transaction() as session:
        count = session.scalar(
            select(func.count())
            .select_from(CancellationRequest)
            .where(CancellationRequest.order_id == order.id)
        )
    assert count == 1


def test_two_long_keys_sharing_a_prefix_make_two_requests(client: TestClient, staff: dict[str, str]) -> None:
    order = new_order(quantity=2)
    prefix = key_of(199)
    payload = {"order_item": order.item_id, "reason": 1, "quantity": 1}
    ids = {
        client.post(BASE, headers={**staff, "Idempotency-Key": prefix + end}, json=payload).json()["id"]
        for end in "ab"
    }
    assert len(ids) == 2


def test_a_key_over_200_is_an_error_about_the_header(client: TestClient, staff: dict[str, str]) -> None:
    order = new_order()
    payload = {"order_item": order.item_id, "reason": 1, "quantity": 1}
    response = client.post(BASE, headers={**staff, "Idempotency-Key": key_of(201)}, json=payload)
    assert response.status_code == 400
    assert set(response.json()) == {"Idempotency-Key", "code"}
