"""A counter in Redis, for probes and benchmarks (never for workflow state).

It lives where the login throttle counts (`throttle.storage_uri`): `CANCELFLOW_THROTTLE_URL`, else the
broker when it is Redis. On RabbitMQ without a throttle URL there is no Redis to count in.
"""

from __future__ import annotations

import functools

import redis

from cancelflow.config import get_settings


@functools.cache
def _client() -> redis.Redis:
    from cancelflow.services.throttle import storage_uri

    url = storage_uri(get_settings())
    if url.startswith("redis+unix://"):
        return redis.Redis(unix_socket_path=url[len("redis+unix://") :])
    if url.startswith(("redis://", "rediss://")):
        return redis.Redis.from_url(url)
    raise RuntimeError("counters need Redis: set CANCELFLOW_THROTTLE_URL when the broker is not Redis")


# Counters live under their own prefix: a `workflow.ping` message names a counter, never one of the
# broker's own keys (queues, unacked index, bindings).
PREFIX = "cancelflow:counter:"


def incr(key: str) -> int:
    return int(_client().incr(f"{PREFIX}{key}"))


def get(key: str) -> int:
    return int(_client().get(f"{PREFIX}{key}") or 0)
