"""Typed, keyword-only builders of import payloads with ids unique across the test run."""

from __future__ import annotations

import itertools
import random
from typing import Any

_ids = itertools.count(random.randrange(10**9, 2 * 10**9, 10**5))
VALID_IBAN = "DE89370400440532013000"


def next_id() -> int:
    return next(_ids)


def service_payload(
    *,
    handle: str | None = None,
    callback_url: str = "http://127.0.0.1:9/unused",
    secret: str = "sandbox-secret-123",
    deadline_seconds: int = 3600,
    reminder_interval_seconds: int = 600,
    reminder_count: int = 3,
    deadline_action: str = "escalate",
) -> dict[str, Any]:
    sid = next_id()
    return {
        "id": sid,
        "handle": handle or f"svc-{sid}",
        "name": f"Service {sid}",
        "callback_url": callback_url,
        "secret": secret,
        "location_id": sid,
        "location_name": "Apple Api Shipwire",
        "country_code": "DE",
        "reply_policy": {
            "deadline_seconds": deadline_seconds,
            "reminder_interval_seconds": reminder_interval_seconds,
            "reminder_count": reminder_count,
            "deadline_action": deadline_action,
        },
    }


def order_payload(
    *,
    service_handle: str | None = None,
    request_status: str = "accepted",
    fo_status: str = "in_progress",
    quantity: int = 2,
    unit_price: str = "49.90",
    method: str = "card",
    currency: str = "try",
    items: int = 1,
    email: str | None = None,
    channel: int = 1,
    with_fulfillment_order: bool = True,
) -> dict[str, Any]:
    order_id = next_id()
    item_rows = [
        {
            "id": next_id(),
            "sku": f"SKU-{order_id}-{n}",
            "product_name": f"Product {n}",
            "quantity": quantity,
            "unit_price": unit_price,
            "variant_id": 49148385,
            "inventory_item_id": 49148385,
        }
        for n in range(items)
    ]
    fos = []
    if with_fulfillment_order:
        fos.append(
            {
                "id": next_id(),
                "fulfillment_service": service_handle,
                "request_status": request_status if service_handle else "unsubmitted",
                "status": fo_status if service_handle else "open",
                "destination": {
                    "id": order_id,
                    "address1": "Chestnut Street 92",
                    "address2": "",
                    "city": "Louisville",
                    "company": None,
                    "country": "United States",
                    "email": "bob.norman@hostmail.com",
                    "first_name": "Bob",
                    "last_name": "Norman",
                    "phone": "555-625-1199",
                    "province": "Kentucky",
                    "zip": "40202",
                },
                "line_items": [
                    {"id": next_id(), "order_item": i["id"], "quantity": quantity} for i in item_rows
                ],
            }
        )
    return {
        "id": order_id,
        "number": f"T{order_id}",
        "channel": channel,
        "customer": {
            "id": order_id,
            "first_name": "Bob",
            "last_name": "Norman",
            "email": email or f"bob{order_id}@example.com",
            "channel": channel,
        },
        "currency": currency,
        "shipping_option_slug": "standard",
        "tracking_number": f"TRK{order_id}",
        "payment": {"method": method, "amount": "999.99", "reference": f"pay_{order_id}"},
        "items": item_rows,
        "fulfillment_orders": fos,
    }


def reference_payload() -> dict[str, Any]:
    return {
        "channels": [{"id": 1, "name": "Web"}, {"id": 2, "name": "App"}],
        "cancellation_reasons": [
            {"id": 1, "subject": "Changed my mind", "cancellation_type": "cancel"},
            {"id": 3, "subject": "Damaged", "cancellation_type": "refund"},
        ],
    }


def load(payload: dict[str, Any]) -> dict[str, int]:
    """Import through the real import service, committed."""
    from cancelflow.db import transaction
    from cancelflow.services.importer import import_payload

    with transaction() as session:
        return import_payload(session, {**reference_payload(), **payload})
