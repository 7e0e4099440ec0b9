"""Akinon's own client (omnisdk from PyPI) against a live server: login, list, create, retrieve, update
(approve) and reject, over real HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from omnisdk.omnitron.client import OmnitronApiClient
from omnisdk.omnitron.endpoints import ChannelCancellationRequestEndpoint, OmnitronApiEndpoint
from omnisdk.omnitron.models import CancellationRequest

from cancelflow.api.app import create_app
from cancelflow.db import transaction
from cancelflow.services import users
from tests.factories import load, order_payload, service_payload
from tests.harness import serving


class CancellationRequestEndpoint(OmnitronApiEndpoint):
    """The global resource; omnisdk ships only the channel one, built the same way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, endpoint="cancellation_requests", model=CancellationRequest, **kwargs)


@pytest.fixture(scope="module")
def base_url(database: str) -> Iterator[str]:
    with serving(create_app()) as address:
        yield f"http://{address}/"


@pytest.fixture(scope="module")
def api(base_url: str) -> Iterator[OmnitronApiClient]:
    name = f"omni-{uuid.uuid4().hex[:8]}"
    with transaction() as session:
        users.create_user(session, username=name, password="omnisdk password", permissions=["view_iban"])
    client = OmnitronApiClient(base_url, name, "omnisdk password")
    yield client
    client.session.close()


def test_crud_and_reject_through_omnisdk(api: OmnitronApiClient) -> None:
    service = service_payload()
    order = order_payload(service_handle=service["handle"], items=2, quantity=2)
    load({"fulfillment_services": [service], "orders": [order]})
    assert api.token.startswith("Token ")

    # create: omnisdk posts the model's attributes as JSON
    created = CancellationRequestEndpoint().create(
        CancellationRequest(
            order_item=order["items"][0]["id"], reason=1, quantity=1, description="via omnisdk"
        )
    )
    assert created.status == "waiting"
    assert created.order_item == order["items"][0]["id"]

    channel_created = ChannelCancellationRequestEndpoint(channel_id=order["channel"]).create(
        CancellationRequest(order_item=order["items"][1]["id"], reason=1, cancellation_type="cancel")
    )
    assert channel_created.quantity == 2

    # retrieve
    got = CancellationRequestEndpoint().retrieve(created.id)
    assert (got.id, got.description) == (created.id, "via omnisdk")

    # list: omnisdk pages through `next` until it is null
    endpoint = ChannelCancellationRequestEndpoint(channel_id=order["channel"])
    first_page = endpoint.list(params={"order": order["id"], "limit": 1})
    seen = [item.id for item in first_page] + [item.id for page in endpoint.iterator for item in page]
    assert seen == [channel_created.id, created.id]  # newest first, one per page

    # update (omnisdk's update is a PATCH): approve by status
    approved = CancellationRequestEndpoint().update(created.id, CancellationRequest(status="approved"))
    assert approved.status == "approved"

    # reject: omnisdk's detail-route style, a POST to `{id}/reject/`
    rejected = ChannelCancellationRequestEndpoint(channel_id=order["channel"])(
        path=f"{channel_created.id}/reject"
    ).create(None)
    assert rejected.status == "rejected"

    # an action the state machine forbids surfaces as omnisdk's HTTPError with the Akinon body
    with pytest.raises(requests.HTTPError) as caught:
        CancellationRequestEndpoint().update(channel_created.id, CancellationRequest(status="approved"))
    assert caught.value.response.status_code == 400
    assert caught.value.args[1]["code"] == "invalid_transition"
