"""A service's answer is written to its merchant request by one UPDATE, without reading the request first:
a copy of that request the session already holds must show the answer all the same."""

from __future__ import annotations

import secrets

from cancelflow.db import transaction
from cancelflow.services import after_commit, replies
from cancelflow.services import fulfillment_orders as fos
from tests.factories import load, order_payload, service_payload
from tests.inprocess import request_steps


def test_the_answer_reaches_a_merchant_request_the_session_holds(sent: list[after_commit.Send]) -> None:
    svc = service_payload(secret=secrets.token_hex(8))
    order = order_payload(service_handle=svc["handle"], quantity=1)
    load({"fulfillment_services": [svc], "orders": [order]})
    fo_id = order["fulfillment_orders"][0]["id"]  # one line of quantity 1: routing asks about it whole
    for name, work in request_steps(order["items"][0]["id"], sent):
        if name == "accept (API)":
            break
        with transaction() as session:
            work(session)
    assert fo_id is not None
    with transaction() as session:
        held = fos.open_cancellation_request(session, fo_id)
        assert held is not None
        assert held.response is None
        outcome = replies.answer_cancellation(
            session, fo_id, decision="accept", message="ok", service_id=None
        )
        assert outcome.applied
        assert (held.response, held.response_message) == ("accepted", "ok")
        assert held.responded_at is not None
    with transaction() as session:
        stored = fos.open_cancellation_request(session, fo_id)
        assert stored is not None
        assert (stored.id, stored.response, stored.response_message) == (held.id, "accepted", "ok")
