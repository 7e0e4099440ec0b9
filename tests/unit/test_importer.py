"""The import service: idempotent, and a bad payload writes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from cancelflow.errors import Invalid
from cancelflow.models import Customer, Order
from cancelflow.services.importer import import_payload
from tests.factories import order_payload, reference_payload


def test_order_number_taken_by_another_order_is_refused(session: Session) -> None:
    first = order_payload()
    import_payload(session, {**reference_payload(), "orders": [first]})
    clash = order_payload()
    clash["number"] = first["number"]
    with pytest.raises(Invalid) as info:
        import_payload(session, {"orders": [clash]})
    assert "orders.0.number" in info.value.field_errors
    assert session.get(Order, clash["id"]) is None


def test_unknown_customer_id_is_a_field_error_and_nothing_is_written(session: Session) -> None:
    order = order_payload()
    order["customer"] = 987654321
    reasons = reference_payload()
    with pytest.raises(Invalid) as info:
        import_payload(session, {**reasons, "customers": [{"id": 123456789, "email": "a@example.com"}],
                                 "orders": [order]})
    assert info.value.field_errors == {"orders.0.customer": ["non-existent object"]}
    assert session.get(Customer, 123456789) is None


def test_duplicate_numbers_inside_one_payload(session: Session) -> None:
    a, b = order_payload(), order_payload()
    b["number"] = a["number"]
    with pytest.raises(Invalid) as info:
        import_payload(session, {**reference_payload(), "orders": [a, b]})
    assert list(info.value.field_errors) == ["orders.1.number"]


def test_fulfillment_orders_may_not_hold_more_than_ordered(session: Session) -> None:
    order = order_payload(quantity=2)
    order["fulfillment_orders"][0]["line_items"][0]["quantity"] = 3
    with pytest.raises(Invalid) as info:
        import_payload(session, {**reference_payload(), "orders": [order]})
    assert any("more than was ordered" in m for msgs in info.value.field_errors.values() for m in msgs)
