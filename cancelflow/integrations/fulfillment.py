"""Telling a fulfillment service it has work: Shopify's notify-then-pull callback, HMAC-signed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Protocol, runtime_checkable

import httpx

from cancelflow.config import get_settings
from cancelflow.integrations.http import post_json
from cancelflow.integrations.outbound import guarded_client

SIGNATURE_HEADER = "X-Shopify-Hmac-Sha256"


def sign(secret: str, body: bytes) -> str:
    """Base64 HMAC-SHA256 of the raw body, as Shopify signs its fulfillment-service callbacks."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


@runtime_checkable
class Notifier(Protocol):
    def notify(self, *, callback_url: str, secret: str, kind: str) -> None: ...


class HttpNotifier:
    """POST `{callback_url}/fulfillment_order_notification` with `{"kind": …}`; the service then pulls.

    The callback URL is the service's own choice: the call goes through the outbound guard, and a failure
    is recorded as a status or a short reason, never the reply's body.
    """

    def __init__(self, client: httpx.Client | None = None) -> None:
        timeout = get_settings().http_timeout.total_seconds()
        self._client = client or guarded_client(timeout=timeout)

    def notify(self, *, callback_url: str, secret: str, kind: str) -> None:
        body = json.dumps({"kind": kind}, separators=(",", ":")).encode()
        post_json(
            self._client,
            callback_url.rstrip("/") + "/fulfillment_order_notification",
            what="fulfillment notification",
            content=body,
            headers={SIGNATURE_HEADER: sign(secret, body)},
            with_body=False,
        )
