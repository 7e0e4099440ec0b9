"""The import service: idempotent, and a bad payload writes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from cancelflow.errors import Invalid
from cancelflow.models import Customer, FulfillmentOrder, Order
from cancelflow.models.fulfillment import GENERATED_ID_FLOOR
from cancelflow.services import fulfillment_orders
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
        import_payload(
            session,
            {**reasons, "customers": [{"id": 123456789, "email": "a@example.com"}], "orders": [order]},
        )
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


def test_a_fulfillment_order_id_of_another_order_is_refused_not_skipped(session: Session) -> None:
    # Given an order whose fulfillment order is stored
    first = order_payload(service_handle=None)
    import_payload(session, {**reference_payload(), "orders": [first]})
    stored_fo = first["fulfillment_orders"][0]
    # When other orders arrive naming the same fulfillment order id, or the same line id
    fo_clash = order_payload(service_handle=None)
    fo_clash["fulfillment_orders"][0]["id"] = stored_fo["id"]
    line_clash = order_payload(service_handle=None)
    line_clash["fulfillment_orders"][0]["line_items"][0]["id"] = stored_fo["line_items"][0]["id"]
    with pytest.raises(Invalid) as info:
        import_payload(session, {"orders": [fo_clash, line_clash]})
    # Then each is refused on its field, and nothing of either is written
    assert info.value.field_errors == {
        "orders.0.fulfillment_orders.0.id": ["fulfillment order id already used by another order"],
        "orders.1.fulfillment_orders.0.line_items.0.id": [
            "line item id already used by another fulfillment order"
        ],
    }
    assert session.get(Order, fo_clash["id"]) is None
    assert session.get(Order, line_clash["id"]) is None


def test_an_order_item_id_of_another_order_is_refused(session: Session) -> None:
    first = order_payload()
    import_payload(session, {**reference_payload(), "orders": [first]})
    clash = order_payload(with_fulfillment_order=False)
    clash["items"][0]["id"] = first["items"][0]["id"]
    with pytest.raises(Invalid) as info:
        import_payload(session, {"orders": [clash]})
    assert info.value.field_errors == {"orders.0.items.0.id": ["order item id already used by another order"]}


def test_reimporting_the_same_order_is_still_a_no_op(session: Session) -> None:
    order = order_payload()
    import_payload(session, {**reference_payload(), "orders": [order]})
    counts = import_payload(session, {"orders": [order]})
    assert (counts["orders"], counts["fulfillment_orders"], counts["fulfillment_order_line_items"]) == (
        0,
        0,
        0,
    )


def test_split_fulfillment_orders_are_numbered_apart_from_imported_ones(session: Session) -> None:
    # Given an imported fulfillment order holding 3 of an item
    order = order_payload(quantity=3)
    import_payload(session, {**reference_payload(), "orders": [order]})
    fo = session.get_one(FulfillmentOrder, order["fulfillment_orders"][0]["id"])
    (line,) = fulfillment_orders.line_items(session, fo.id)
    # When 1 of them is split off
    part = fulfillment_orders.split(session, fo, line, 1)
    # Then the new order and its line are numbered from the generated range, which imports may not use
    (part_line,) = fulfillment_orders.line_items(session, part.id)
    assert part.id >= GENERATED_ID_FLOOR
    assert part_line.id >= GENERATED_ID_FLOOR
    taken = order_payload()
    taken["fulfillment_orders"][0]["id"] = part.id
    with pytest.raises(Invalid) as info:
        import_payload(session, {"orders": [taken]})
    assert list(info.value.field_errors) == ["orders.0.fulfillment_orders.0.id"]
