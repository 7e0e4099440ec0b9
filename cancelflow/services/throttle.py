"""Attempt counters for what an attacker repeats: password guesses per account and per client address.

Counters are moving windows (the `limits` library) kept in Redis, so every API process and replica counts
the same attempts: the broker's Redis unless `CANCELFLOW_THROTTLE_URL` names another store. An attempt is
counted before the work it guards, so parallel attempts are counted as they arrive, and an attempt over a
limit costs a counter round trip, not a password hash. A store that does not answer refuses the attempt
(503) rather than letting it through unthrottled.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar
from urllib.parse import urlsplit

from limits import RateLimitItem, parse
from limits.storage import Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from redis.exceptions import RedisError

from cancelflow.config import get_settings
from cancelflow.config.settings import Settings
from cancelflow.errors import Throttled, TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")

NAMESPACE: Final = "cancelflow-throttle"
THROTTLED: Final = "Request was throttled. Expected available in {wait} seconds."


@dataclass(frozen=True, slots=True)
class Rule:
    """One counter: `name` keys it apart from the others, `limit` is its rate."""

    name: str
    limit: RateLimitItem


def storage_uri(settings: Settings) -> str:
    """`CANCELFLOW_THROTTLE_URL`, else the broker when it is Redis, else this process's memory."""
    if settings.throttle_url:
        return settings.throttle_url
    broker = settings.broker_url or ""
    parts = urlsplit(broker)
    if parts.scheme in ("redis", "rediss"):
        return broker
    if parts.scheme in ("redis+socket", "socket"):  # kombu's socket scheme is redis-py's unix://
        return "redis+unix://" + broker.split("://", 1)[1]
    log.warning(
        "login throttling counts in this process's memory: the broker is not Redis and "
        "CANCELFLOW_THROTTLE_URL is unset, so each API process counts on its own"
    )
    return "memory://"


class Throttle:
    """Moving-window counters over one `limits` storage."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._limiter = MovingWindowRateLimiter(storage)

    @classmethod
    def from_uri(cls, uri: str) -> Throttle:
        storage = storage_from_string(uri)
        if not isinstance(storage, Storage):  # an async storage (async+redis://) has no place here
            raise ValueError(
                f"CANCELFLOW_THROTTLE_URL must name a synchronous storage, not {uri.split(':')[0]}"
            )
        return cls(storage)

    def attempt(self, rule: Rule, identity: str) -> None:
        """Count one attempt, or raise `Throttled` with how long to wait when the window is full."""
        key = _key(identity)
        try:
            allowed = self._limiter.hit(rule.limit, NAMESPACE, rule.name, key)
            if allowed:
                return
            reset_at = self._limiter.get_window_stats(rule.limit, NAMESPACE, rule.name, key).reset_time
        except (RedisError, OSError) as exc:  # the store is away: refuse rather than let guesses through
            log.warning("throttle store unavailable (%s): attempt refused", type(exc).__name__)
            raise TransientError("Too many attempts cannot be ruled out now; try again.") from exc
        wait = max(1, math.ceil(reset_at - time.time()))
        log.info("throttled", extra={"rule": rule.name, "retry_after": wait})
        raise Throttled(THROTTLED.format(wait=wait), retry_after=wait)

    def reset(self, rule: Rule, identity: str) -> None:
        """Forget the attempts counted for `identity` (a successful login clears its account's count)."""
        try:
            self._limiter.clear(rule.limit, NAMESPACE, rule.name, _key(identity))
        except (RedisError, OSError):  # the count then expires with its window; the login succeeded
            log.warning("throttle store unavailable: count of %s not reset", rule.name)


def _key(identity: str) -> str:
    # Fixed length and no separators whatever the caller sent (a username may be 1,000 characters).
    return hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()


@functools.cache
def _throttle(uri: str) -> Throttle:
    return Throttle.from_uri(uri)


def get_throttle() -> Throttle:
    """The process-wide throttle over the configured store."""
    return _throttle(storage_uri(get_settings()))


def login_rules(settings: Settings | None = None) -> tuple[Rule, Rule]:
    """(per username, per client address), from the settings."""
    settings = settings or get_settings()
    return (
        Rule("login-username", parse(settings.login_limit_per_username)),
        Rule("login-address", parse(settings.login_limit_per_address)),
    )


# --- bounded CPU work ---------------------------------------------------------------------------------


@functools.cache
def _login_limiter(size: int) -> object:
    import anyio

    return anyio.CapacityLimiter(size)


def run_login(work: Callable[[], T]) -> Awaitable[T]:
    """Run a login (a password hash: tens of ms of a core) on a worker thread, at most
    `CANCELFLOW_LOGIN_CONCURRENCY` at once per process. Waiting logins hold no thread, so a burst of
    them leaves the threads and cores of every other request free."""
    import anyio
    import anyio.to_thread

    limiter = _login_limiter(get_settings().login_concurrency)
    assert isinstance(limiter, anyio.CapacityLimiter)
    return anyio.to_thread.run_sync(work, limiter=limiter)
