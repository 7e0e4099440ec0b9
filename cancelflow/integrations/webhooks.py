"""The HTTP side of outbound webhooks: the signed request a subscriber receives, and one POST of it.

Signing (Stripe-style; what a receiver checks)
    Headers: `X-Cancelflow-Event-Id` (the dedupe key, the same on every retry and redelivery),
    `X-Cancelflow-Event-Type`, `X-Cancelflow-Timestamp` (unix seconds) and
    `X-Cancelflow-Signature: t=<timestamp>,v1=<hex>` where
    `hex = HMAC-SHA256(key=secret, msg=f"{timestamp}.{raw_body}")` over the raw request body bytes.
    The receiver recomputes it with its secret, compares in constant time, and rejects timestamps too
    far from its clock (replays). `verify_signature()` is the reference implementation.

The subscriber's URL is someone else's choice: `post()` goes through the outbound guard, reads only the
answer's status (and `Retry-After`), and reports a failure as a short reason, never the answer's body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import httpx

from cancelflow.integrations import outbound
from cancelflow.integrations.http import retry_after

log = logging.getLogger(__name__)

SIGNATURE_TOLERANCE_SECONDS: Final = 300


def encode(payload: Mapping[str, object]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Cancelflow-Signature` header value."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    *,
    tolerance_seconds: int = SIGNATURE_TOLERANCE_SECONDS,
    at: float | None = None,
) -> bool:
    """What a receiver does: recompute, compare in constant time, refuse stale timestamps."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):  # no or malformed timestamp: not our signature
        return False
    if abs((time.time() if at is None else at) - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, candidate) for candidate in fields.get("v1", []))


def headers_for(
    *, event_id: uuid.UUID, event_type: str, secret: str, timestamp: int, body: bytes
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "cancelflow-webhooks/1",
        "X-Cancelflow-Event-Id": str(event_id),
        "X-Cancelflow-Event-Type": event_type,
        "X-Cancelflow-Timestamp": str(timestamp),
        "X-Cancelflow-Signature": sign(secret, timestamp, body),
    }


@dataclass(frozen=True, slots=True)
class Answer:
    """What one POST came to: the status, or why there was none (sanitised), and how long it took."""

    status_code: int | None
    error: str | None  # None on a 2xx
    refused: bool  # the destination is outside the outbound policy: no retry can reach it
    retry_after: float | None  # the receiver's Retry-After, in seconds
    duration_ms: int


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    client: httpx.Client | None = None,
) -> Answer:
    """POST without reading the answer's body: only its status is kept."""
    status_code: int | None = None
    error: str | None = None
    wait: float | None = None
    refused = False
    started = time.monotonic()
    try:
        response = _send(client, url, body, dict(headers))
        status_code = response.status_code
        if not response.is_success:
            # The status only: what the far side answered is not ours to store or show.
            error = outbound.failure_reason(status_code=status_code)
            wait = retry_after(response.headers.get("Retry-After"))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # no answer: reported as a failed attempt
        error = outbound.failure_reason(exc)
        refused = error in (outbound.NOT_ALLOWED, outbound.INVALID_URL)
        log.info("webhook POST: %s (%s)", error, type(exc).__name__)
    duration_ms = int((time.monotonic() - started) * 1000)
    return Answer(
        status_code=status_code, error=error, refused=refused, retry_after=wait, duration_ms=duration_ms
    )


def _send(client: httpx.Client | None, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    if client is not None:
        response = client.send(client.build_request("POST", url, content=body, headers=headers), stream=True)
        response.close()
        return response
    with outbound.guarded_client() as own:
        response = own.send(own.build_request("POST", url, content=body, headers=headers), stream=True)
        response.close()
        return response


__all__ = ["Answer", "encode", "headers_for", "post", "sign", "verify_signature"]
