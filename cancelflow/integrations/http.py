"""Shared HTTP handling: how a response or a network failure maps onto retry classification."""

from __future__ import annotations

import httpx

from cancelflow.errors import PermanentError, TransientError

RETRYABLE_4XX = frozenset({408, 409, 425, 429})


def classify(response: httpx.Response, what: str) -> None:
    """Raise TransientError for 5xx and retryable 4xx, PermanentError for other 4xx; return on 2xx."""
    if response.is_success:
        return
    body = response.text[:300]
    if response.status_code >= 500 or response.status_code in RETRYABLE_4XX:
        raise TransientError(f"{what}: HTTP {response.status_code} {body}")
    raise PermanentError(f"{what}: HTTP {response.status_code} {body}")


def post_json(
    client: httpx.Client, url: str, *, what: str, content: bytes, headers: dict[str, str]
) -> httpx.Response:
    try:
        response = client.post(url, content=content, headers={"Content-Type": "application/json", **headers})
    except httpx.TransportError as exc:  # connection refused, reset, timeout: the far side may recover
        raise TransientError(f"{what}: {type(exc).__name__}: {exc}") from exc
    classify(response, what)
    return response
