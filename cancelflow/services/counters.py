"""A counter in the broker's Redis, for probes and benchmarks (never for workflow state)."""

from __future__ import annotations

import functools

import redis

from cancelflow.config import get_settings


@functools.cache
def _client() -> redis.Redis:
    url = get_settings().require_broker_url()
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url[len("redis+socket://") :])
    return redis.Redis.from_url(url)


# Counters live under their own prefix: a `workflow.ping` message names a counter, never one of the
# broker's own keys (queues, unacked index, bindings).
PREFIX = "cancelflow:counter:"


def incr(key: str) -> int:
    return int(_client().incr(f"{PREFIX}{key}"))


def get(key: str) -> int:
    return int(_client().get(f"{PREFIX}{key}") or 0)
