"""The Redis broker transport, with one Redis client per channel instead of one per command.

kombu's Redis channel builds a new `redis.Redis` client for every publish and every acknowledgement
(`conn_or_acquire`). The client is only a handle on the channel's connection pool, but redis-py builds its
table of response callbacks in each constructor, which costs more than the LPUSH it is made for: half the
CPU of a publish. This channel keeps the client for as long as its pool lives; when kombu replaces the pool
(after a connection error), a new client is made on the new pool. Everything else is kombu's.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

NAME = "cancelflow.worker.broker:Transport"


class Channel(kombu_redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()  # type: ignore[misc]
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
