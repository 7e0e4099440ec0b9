"""What the console tests share: staff users made by the real user service, and signing in over HTTP."""

from __future__ import annotations

import re
import uuid

import httpx
from fastapi.testclient import TestClient

from cancelflow.db import transaction
from cancelflow.services import users

PASSWORD = "correct horse battery"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_LOGIN_TOKEN = re.compile(r'name="login_token" value="([^"]+)"')


def staff_user(*permissions: str, password: str = PASSWORD) -> str:
    name = f"staff-{uuid.uuid4().hex[:10]}"
    with transaction() as session:
        users.create_user(session, username=name, password=password, permissions=permissions)
    return name


def sign_in(client: TestClient | httpx.Client, username: str, password: str = PASSWORD) -> httpx.Response:
    """Post the sign-in form as a browser would (its token from the form, its cookie kept)."""
    form = client.get("/console/login")
    match = _LOGIN_TOKEN.search(form.text)
    assert match is not None, form.text
    return client.post(
        "/console/login",
        data={"username": username, "password": password, "login_token": match[1]},
        follow_redirects=False,
    )


def csrf_of(page: httpx.Response) -> str:
    match = _CSRF.search(page.text)
    assert match is not None, page.text
    return match[1]


def waiting_requests(n: int, *, email: str | None = None) -> list[int]:
    """n waiting requests (quantity 1 each) on one fresh order whose item holds exactly n, inserted
    set-based with the item's quantity reserved as intake would have, so each can be approved or rejected
    by the real services (a rejection gives its 1 back)."""
    from sqlalchemy import text

    from tests.factories import new_order

    order = new_order(email=email, quantity=n)
    with transaction() as session:
        rows = session.execute(
            text(
                "INSERT INTO cancellation_requests (uuid, order_item_id, order_id, channel_id, reason_id, "
                "cancellation_type, status, quantity, fully_refund_as_loyalty_money, attributes, version) "
                "SELECT gen_random_uuid(), :item, :order, o.channel_id, 1, 'cancel', 'waiting', 1, false, "
                "'{}', 1 FROM generate_series(1, :n), orders o WHERE o.id = :order RETURNING id"
            ),
            {"item": order.item_id, "order": order.id, "n": n},
        )
        ids = sorted(int(r[0]) for r in rows)
        session.execute(
            text("UPDATE order_items SET requested_quantity = :n WHERE id = :item"),
            {"n": n, "item": order.item_id},
        )
    return ids
