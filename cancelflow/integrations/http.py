"""Shared HTTP handling: how a response or a network failure maps onto retry classification."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from cancelflow.errors import PermanentError, TransientError
from cancelflow.integrations.outbound import DestinationNotAllowed, failure_reason
from cancelflow.textcheck import storable

RETRYABLE_4XX = frozenset({408, 409, 425, 429})


def classify(response: httpx.Response, what: str, *, with_body: bool = True) -> None:
    """Raise TransientError for 5xx and retryable 4xx, PermanentError for other 4xx; return on 2xx.

    `with_body=False` for destinations someone else chose: the error says the status, not what came back.
    """
    if response.is_success:
        return
    if with_body:
        message = f"{what}: HTTP {response.status_code} {storable(response.text[:300])}"
    else:
        message = f"{what}: {failure_reason(status_code=response.status_code)}"
    if response.status_code >= 500 or response.status_code in RETRYABLE_4XX:
        raise TransientError(
            message,
            retry_after=retry_after(response.headers.get("Retry-After")),
        )
    raise PermanentError(message)


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
    client: httpx.Client,
    url: str,
    *,
    what: str,
    content: bytes,
    headers: dict[str, str],
    with_body: bool = True,
) -> httpx.Response:
    """POST and classify.

    `with_body=False` is for a URL someone else chose: the body of the answer is not read, and errors keep
    to a status or a short reason.
    """
    try:
        request = client.build_request(
            "POST", url, content=content, headers={"Content-Type": "application/json", **headers}
        )
        response = client.send(request, stream=not with_body)
        if not with_body:
            response.close()
    except (DestinationNotAllowed, httpx.UnsupportedProtocol) as exc:  # retrying changes neither
        raise PermanentError(f"{what}: {failure_reason(exc)}") from exc
    except httpx.TransportError as exc:  # connection refused, reset, timeout: the far side may recover
        detail = f"{type(exc).__name__}: {exc}" if with_body else failure_reason(exc)
        raise TransientError(f"{what}: {detail}") from exc
    except httpx.InvalidURL as exc:
        raise PermanentError(f"{what}: {failure_reason(exc)}") from exc
    classify(response, what, with_body=with_body)
    return response
