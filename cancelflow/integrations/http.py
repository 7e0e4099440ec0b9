"""Shared HTTP handling: how a response or a network failure maps onto retry classification."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from cancelflow.errors import PermanentError, TransientError
from cancelflow.textcheck import storable

RETRYABLE_4XX = frozenset({408, 409, 425, 429})


def classify(response: httpx.Response, what: str) -> None:
    """Raise TransientError for 5xx and retryable 4xx, PermanentError for other 4xx; return on 2xx."""
    if response.is_success:
        return
    body = storable(response.text[:300])  # recorded on the step: the far side's text, made storable
    if response.status_code >= 500 or response.status_code in RETRYABLE_4XX:
        raise TransientError(
            f"{what}: HTTP {response.status_code} {body}",
            retry_after=retry_after(response.headers.get("Retry-After")),
        )
    raise PermanentError(f"{what}: HTTP {response.status_code} {body}")


MAX_RETRY_AFTER = 3600.0  # seconds; a longer ask is capped (the sweeper still finds the step)


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def post_json(
    client: httpx.Client, url: str, *, what: str, content: bytes, headers: dict[str, str]
) -> httpx.Response:
    try:
        response = client.post(url, content=content, headers={"Content-Type": "application/json", **headers})
    except httpx.TransportError as exc:  # connection refused, reset, timeout: the far side may recover
        raise TransientError(f"{what}: {type(exc).__name__}: {exc}") from exc
    classify(response, what)
    return response
