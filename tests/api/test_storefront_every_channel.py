"""A storefront token made without `--channel` (the one `cancelflow run` prints) acts for every channel."""

from __future__ import annotations

from fastapi.testclient import TestClient

from cancelflow.db import transaction
from cancelflow.models import ExportFormat
from cancelflow.services import exports
from tests.factories import new_order, token_headers

BASE = "/api/v1/cancellation_requests/"


def channel_base(channel: int) -> str:
    return f"/api/v1/channel/{channel}/cancellation_requests/"


class TestStorefrontWithoutChannel:
    def test_lists_creates_and_reads_on_every_channel(self, client: TestClient) -> None:
        # Given a storefront token with no channel, and an order on each of two channels
        storefront = token_headers("storefront")
        orders = {channel: new_order(channel=channel) for channel in (1, 2)}

        # When it creates a request on each channel, through the global route and through the twin
        created: dict[int, int] = {}
        for channel, order in orders.items():
            body = {"order_item": order.item_id, "reason": 1, "quantity": 1}
            path = BASE if channel == 1 else channel_base(channel)
            response = client.post(path, headers=storefront, json=body)
            assert response.status_code == 201, response.text
            assert response.json()["channel"] == channel
            created[channel] = response.json()["id"]

        # Then every read path answers, each showing the requests of its scope
        listed = client.get(BASE, headers=storefront, params={"limit": 1000})
        assert listed.status_code == 200, listed.text
        assert set(created.values()) <= {r["id"] for r in listed.json()["results"]}
        for channel, request_id in created.items():
            twin = client.get(channel_base(channel), headers=storefront, params={"limit": 1000})
            assert twin.status_code == 200, twin.text
            ids = {r["id"] for r in twin.json()["results"]}
            assert request_id in ids
            assert created[3 - channel] not in ids
            for path in (f"{BASE}{request_id}/", f"{channel_base(channel)}{request_id}/detailed/"):
                assert client.get(path, headers=storefront).status_code == 200, path
            assert client.get(f"{BASE}detailed/", headers=storefront).status_code == 200
            # Another channel's twin does not show the request
            assert (
                client.get(f"{channel_base(3 - channel)}{request_id}/", headers=storefront).status_code == 404
            )

        # And it still may not change or reject, nor tag
        some = created[1]
        assert (
            client.patch(f"{BASE}{some}/", headers=storefront, json={"description": "x"}).status_code == 403
        )
        assert client.post(f"{BASE}{some}/reject/", headers=storefront).status_code == 403
        assert client.post(f"{BASE}{some}/add_tag/", headers=storefront, json={"key": "k"}).status_code == 403

    def test_follows_export_jobs_of_every_channel(self, client: TestClient) -> None:
        with transaction() as session:
            jobs = [
                exports.create_job(session, ExportFormat.csv, filters={}, channel_id=channel, total=1).id
                for channel in (1, 2, None)
            ]
        storefront = token_headers("storefront")
        for job_id in jobs:
            response = client.get(f"/api/v1/exports/{job_id}/", headers=storefront)
            assert response.status_code == 200, response.text

    def test_a_channel_token_keeps_to_its_channel(self, client: TestClient) -> None:
        storefront = token_headers("storefront", channel_id=1)
        assert client.get(channel_base(1), headers=storefront).status_code == 200
        assert client.get(channel_base(2), headers=storefront).status_code == 403
