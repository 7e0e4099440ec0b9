"""Leaky buckets shared by every API process: Shopify's REST call limit and GraphQL cost limit.

A bucket has a `capacity` and drains at `rate` per second; a call pours `amount` in if it fits
(`take`), and a GraphQL query that cost less than it asked for gets the difference back (`refund`).
The level and the time it was last drained live in one Redis hash per bucket, and one Lua script reads,
drains and pours atomically, so concurrent calls on any replica never admit more than the capacity.

The store is the login throttle's (`services.throttle.storage_uri`): `CANCELFLOW_THROTTLE_URL`, else the
broker when it is Redis. When the broker is RabbitMQ and no throttle URL is set, buckets are kept in
this process's memory (each API process then limits on its own, as login throttling does), with a warning.
A Redis that does not answer does not stop the API: the call is counted in this process's memory
instead, so limits stay in force (per process) until Redis is back.

The caller's clock (`time.time()`, or `now`) drives the draining: every replica's clock is NTP-close, a
clock behind the stored time drains nothing rather than going backwards, and tests move it with
time-machine. Keys expire a minute after the bucket would be empty (Redis's own clock runs the expiry: the
slack keeps a bucket whose callers' clock lags, or stands still under time-machine, from vanishing while it
still holds calls), so idle tokens cost no memory.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Final, cast

from limits.storage import storage_from_string
from limits.storage.redis import RedisStorage
from redis.commands.core import Script
from redis.exceptions import RedisError

from cancelflow.config import get_settings
from cancelflow.services.throttle import storage_uri

log = logging.getLogger(__name__)

PREFIX: Final = "cancelflow-bucket"
EPSILON: Final = 1e-3  # a thousandth of a unit: clock rounding (2.4e-7 s at today's epoch) times any rate
_WARN_EVERY: Final = 60.0  # seconds between two "store away" warnings of one process

# KEYS[1] bucket; ARGV: capacity, rate, amount, now, mode ("take" pours in if it fits, "refund" pours out).
# Returns {admitted 0/1, level as a string (Lua numbers would be truncated to integers)}. Numbers are
# stored with all 17 digits (`tostring` keeps 14: a timestamp would lose its milliseconds). A thousandth
# of a unit of slack absorbs the rounding of clock differences.
_SCRIPT: Final = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local amount = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'level', 'ts')
local level = tonumber(state[1]) or 0
local ts = tonumber(state[2]) or now
if now > ts then
  level = math.max(0, level - (now - ts) * rate)
  ts = now
end
local admitted = 0
if ARGV[5] == 'take' then
  if level + amount <= capacity + 1e-3 then
    level = level + amount
    admitted = 1
  end
else
  level = math.max(0, level - amount)
end
redis.call('HSET', KEYS[1], 'level', string.format('%.17g', level), 'ts', string.format('%.17g', ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(level / rate * 1000) + 60000)
return {admitted, string.format('%.17g', level)}
"""


@dataclass(frozen=True, slots=True)
class Bucket:
    """One kind of bucket: `capacity` units, draining `rate` units per second."""

    name: str
    capacity: float
    rate: float

    def wait_for(self, level: float, amount: float) -> float:
        """Seconds until `amount` fits in a bucket filled to `level`."""
        return max(0.0, (level + amount - self.capacity) / self.rate)


@dataclass(frozen=True, slots=True)
class Level:
    admitted: bool
    level: float  # after the call


class _MemoryStore:
    """The same arithmetic in this process's memory (no Redis to share with, or Redis away)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, float]] = {}

    def pour(self, key: str, bucket: Bucket, amount: float, now: float, *, take: bool) -> Level:
        with self._lock:
            level, ts = self._state.get(key, (0.0, now))
            if now > ts:
                level, ts = max(0.0, level - (now - ts) * bucket.rate), now
            admitted = False
            if take:
                if level + amount <= bucket.capacity + EPSILON:
                    level += amount
                    admitted = True
            else:
                level = max(0.0, level - amount)
            if level > 0:
                self._state[key] = (level, ts)
            else:
                self._state.pop(key, None)
            return Level(admitted, level)


class Buckets:
    """Buckets in one Redis (or, with `redis_uri=None`, in memory only)."""

    def __init__(self, redis_uri: str | None) -> None:
        self._memory = _MemoryStore()
        self._warned_at = -math.inf
        self._script: Script | None = None
        if redis_uri is not None:
            storage = storage_from_string(redis_uri)
            if not isinstance(storage, RedisStorage):
                raise ValueError(f"buckets need a Redis store, not {redis_uri.split(':')[0]}")
            self._script = storage.get_connection().register_script(_SCRIPT.encode())

    @classmethod
    def from_uri(cls, uri: str) -> Buckets:
        if uri.startswith("memory://"):
            return cls(None)
        return cls(uri)

    def take(self, bucket: Bucket, key: str, amount: float, *, now: float | None = None) -> Level:
        """Pour `amount` into `key`'s bucket if it fits; say whether it did and the level after."""
        return self._pour(bucket, key, amount, now, take=True)

    def refund(self, bucket: Bucket, key: str, amount: float, *, now: float | None = None) -> Level:
        """Pour `amount` back out (never below empty); the level after."""
        return self._pour(bucket, key, amount, now, take=False)

    def _pour(self, bucket: Bucket, key: str, amount: float, now: float | None, *, take: bool) -> Level:
        now = time.time() if now is None else now
        full_key = f"{PREFIX}:{bucket.name}:{key}"
        if self._script is not None:
            try:
                args = [
                    repr(bucket.capacity),
                    repr(bucket.rate),
                    repr(float(amount)),
                    repr(now),
                    "take" if take else "refund",
                ]
                admitted, level = cast(list[object], self._script(keys=[full_key], args=args))
                return Level(bool(admitted), float(cast(bytes, level)))
            except (RedisError, OSError) as exc:
                self._warn(exc)
        return self._memory.pour(full_key, bucket, amount, now, take=take)

    def _warn(self, exc: BaseException) -> None:
        # Limits stay in force, per process, while the shared store is away; say so now and then.
        if time.monotonic() - self._warned_at >= _WARN_EVERY:
            self._warned_at = time.monotonic()
            log.warning(
                "rate-limit store unavailable (%s): limiting in this process's memory", type(exc).__name__
            )


@functools.cache
def _buckets(uri: str) -> Buckets:
    return Buckets.from_uri(uri)


def get_buckets() -> Buckets:
    """The process-wide buckets over the configured store (the login throttle's)."""
    return _buckets(storage_uri(get_settings()))


__all__ = ["Bucket", "Buckets", "Level", "get_buckets"]
