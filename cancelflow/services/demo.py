"""A generated, deterministic data set for `make run` and `cancelflow demo` (same seed, same file)."""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cancelflow.models import FulfillmentService

FIRST_NAMES = ["Ayşe", "Mehmet", "Elif", "Can", "Zeynep", "Deniz", "Bob", "Alice", "Jonas", "Marta"]
LAST_NAMES = ["Yılmaz", "Kaya", "Demir", "Şahin", "Norman", "Schmidt", "García", "Rossi"]
PRODUCTS = [
    ("SKU-TEE", "Cotton T-shirt"),
    ("SKU-JEAN", "Slim jeans"),
    ("SKU-SNK", "Running sneakers"),
    ("SKU-BAG", "Leather bag"),
    ("SKU-CAP", "Baseball cap"),
    ("SKU-SCF", "Wool scarf"),
]


def demo_services(
    session: Session,
    handles: Iterable[str],
    *,
    secret: Callable[[str], str | None],
    callback_url: Callable[[str], str],
    keep_stored: bool,
) -> dict[str, dict[str, Any]]:
    """The demo's fulfillment services (handle -> id, secret, callback_url), matched to stored ones by handle.

    A stored service keeps its id, so the demo never renames a service someone imported under the same id.
    With `keep_stored` it also keeps its secret and callback URL (loading the demo into a running stack
    leaves the services it talks to as they are); otherwise `secret(handle)` and `callback_url(handle)` win.
    A new service gets `secret(handle)`, or a random secret when that is None, and the next free id.
    """
    wanted = sorted(handles)
    stored = {
        row.handle: row
        for row in session.scalars(select(FulfillmentService).where(FulfillmentService.handle.in_(wanted)))
    }
    next_id = int(session.scalar(select(func.coalesce(func.max(FulfillmentService.id), 0))) or 0) + 1
    services: dict[str, dict[str, Any]] = {}
    for handle in wanted:
        row = stored.get(handle)
        if row is not None and keep_stored:
            services[handle] = {"id": row.id, "secret": row.secret, "callback_url": row.callback_url}
            continue
        if row is not None:
            service_id = row.id
        else:
            service_id, next_id = next_id, next_id + 1
        services[handle] = {
            "id": service_id,
            "secret": secret(handle) or secrets.token_urlsafe(32),
            "callback_url": callback_url(handle),
        }
    return services


def build_demo_payload(
    *, services: Mapping[str, Mapping[str, Any]], orders: int = 50, seed: int = 7, first_id: int = 1000
) -> dict[str, Any]:
    """Orders whose fulfillment orders are spread over `services` (handle -> secret, callback_url, and
    optionally id: by default the services are numbered 1, 2, … in handle order)."""
    rng = random.Random(seed)
    handles = sorted(services)
    payload: dict[str, Any] = {
        "channels": [{"id": 1, "name": "Web store"}, {"id": 2, "name": "Mobile app"}],
        "cancellation_reasons": [
            {"id": 1, "subject": "Changed my mind", "cancellation_type": "cancel"},
            {"id": 2, "subject": "Ordered by mistake", "cancellation_type": "cancel"},
            {"id": 3, "subject": "Damaged on arrival", "cancellation_type": "refund"},
        ],
        "fulfillment_services": [
            {
                "id": services[handle].get("id", i + 1),
                "handle": handle,
                "name": handle.replace("-", " ").title(),
                "callback_url": services[handle]["callback_url"],
                "secret": services[handle]["secret"],
                "location_id": 48752903 + i,
                "location_name": f"{handle} warehouse",
                "country_code": "DE",
            }
            for i, handle in enumerate(handles)
        ],
        "orders": [],
    }
    for n in range(orders):
        order_id = first_id + n
        channel = 1 + n % 2
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        customer = {
            "id": order_id,
            "first_name": first,
            "last_name": last,
            "email": f"customer{order_id}@example.com",
            "channel": channel,
        }
        method = rng.choices(["card", "cash_on_delivery", "bank_transfer"], weights=[6, 2, 2])[0]
        items: list[dict[str, Any]] = []
        for sku, name in rng.sample(PRODUCTS, k=rng.randint(1, 3)):
            items.append(
                {
                    "id": order_id * 10 + len(items) + 1,
                    "sku": sku,
                    "product_name": name,
                    "quantity": rng.randint(1, 3),
                    "unit_price": str(Decimal(rng.randint(999, 19999)) / 100),
                }
            )
        total = sum((Decimal(i["unit_price"]) * int(i["quantity"]) for i in items), Decimal(0))
        fulfillment_orders = []
        handle = handles[n % len(handles)] if handles else None
        accepted = handle is not None and n % 5 != 0  # every fifth order not yet accepted: cancelled directly
        fulfillment_orders.append(
            {
                "id": order_id * 10,
                "fulfillment_service": handle,
                "request_status": "accepted" if accepted else "submitted" if handle else "unsubmitted",
                "status": "in_progress" if accepted else "open",
                "destination": {
                    "id": order_id,
                    "address1": f"{rng.randint(1, 200)} Chestnut Street",
                    "address2": "",
                    "city": "Louisville",
                    "company": None,
                    "country": "United States",
                    "email": customer["email"],
                    "first_name": first,
                    "last_name": last,
                    "phone": "555-625-1199",
                    "province": "Kentucky",
                    "zip": "40202",
                },
                "line_items": [
                    {"id": item["id"] * 10, "order_item": item["id"], "quantity": item["quantity"]}
                    for item in items
                ],
            }
        )
        payload["orders"].append(
            {
                "id": order_id,
                "number": f"CF{order_id:08d}",
                "channel": channel,
                "customer": customer,
                "currency": rng.choice(["try", "eur", "usd"]),
                "shipping_option_slug": rng.choice(["standard", "express"]),
                "tracking_number": f"TRK{order_id:010d}",
                "payment": {"method": method, "amount": str(total), "reference": f"pay_{order_id}"},
                "items": items,
                "fulfillment_orders": fulfillment_orders,
            }
        )
    return payload
