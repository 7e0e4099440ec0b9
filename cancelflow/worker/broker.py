"""The Redis broker transport: one Redis client per channel, and every message marked with its queue.

kombu's Redis channel builds a new `redis.Redis` client for every publish and every acknowledgement
(`conn_or_acquire`). The client is only a handle on the channel's connection pool, but redis-py builds its
table of response callbacks in each constructor, which costs more than the LPUSH it is made for: half the
CPU of a publish. This channel keeps the client for as long as its pool lives; when kombu replaces the pool
(after a connection error), a new client is made on the new pool.

On Redis a message's `delivery_info` is whatever its publisher wrote into it, not what the broker saw. A
producer that may only write the intake queue (the storefront's ACL user) could therefore claim any origin,
and kombu would even restore an unacknowledged message to the queues of the exchange it names. So this
channel overwrites, on every message it consumes, the queue it was read from (`SOURCE_QUEUE`, which the
worker's intake guard reads) and the exchange/routing key an unacknowledged message is restored by (the
queue itself, through the anonymous exchange). Everything else is kombu's.
"""

from __future__ import annotations

import binascii
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kombu.transport import redis as kombu_redis
from redis import exceptions as redis_errors

if TYPE_CHECKING:
    import redis
    from kombu.message import Message

NAME = "cancelflow.worker.broker:Transport"
SOCKET_NAME = "cancelflow.worker.broker:SocketTransport"
# The key of delivery_info that names the queue a message was consumed from (set by this channel only).
SOURCE_QUEUE = "x-cancelflow-queue"

log = logging.getLogger(__name__)
UNREADABLE = (json.JSONDecodeError, UnicodeDecodeError, binascii.Error)


class Channel(kombu_redis.Channel):
    # kombu's stubs leave out the channel's private methods that this class extends (hence the ignores below).
    _sync_client: redis.Redis | None = None

    def _create_client(self, asynchronous: bool = False) -> redis.Redis:
        if asynchronous:
            created: redis.Redis = super()._create_client(asynchronous=True)  # type: ignore[misc]
            return created
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()  # type: ignore[misc]
        return client

    def _connparams(self, asynchronous: bool = False) -> dict[str, object]:
        # A channel closed after its connection was released (the consumer's clean-up when Redis went away)
        # still restores its unacknowledged messages, which builds a new pool from the connection's URL; with
        # the connection gone kombu failed with an AttributeError, which Celery takes for an unrecoverable
        # error: the worker exited on a Redis restart. As a connection error it is ignored like the others,
        # the consumer reconnects, and the messages come back through the visibility timeout.
        if self.connection.client is None:
            raise redis_errors.ConnectionError("the broker connection is closed")
        params: dict[str, object] = super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]
        return params

    def _brpop_read(self, **options: object) -> bool:
        # A list entry that is not a message (not JSON, not UTF-8, a body that is not base64) made kombu raise
        # out of the worker's event loop, which Celery treats as unrecoverable: one such push stopped the worker.
        # BRPOP has taken it off the list already and kombu has not recorded it, so it is reported and dropped.
        try:
            read: bool = super()._brpop_read(**options)  # type: ignore[misc]
            return read
        except UNREADABLE as exc:
            log.error("unreadable broker message dropped: %s", str(exc)[:200])
            return False

    def basic_consume(
        self,
        queue: str,
        no_ack: bool,
        callback: Callable[[Message], object] | None,
        consumer_tag: str | None,
        **kwargs: object,
    ) -> Any:  # kombu's stubs say the consumer tag (str); its Redis channel returns None
        result = super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        # kombu's per-queue callback turns the raw message into a Message and records it as unacknowledged;
        # the origin is fixed before either happens.
        callbacks = self.connection._callbacks
        assert callbacks is not None  # basic_consume has just registered this queue's callback
        callbacks[queue] = _from_queue(queue, callbacks[queue], restore_here=not no_ack)
        return result


def _from_queue(
    queue: str, deliver: Callable[[object], object], *, restore_here: bool
) -> Callable[[object], object]:
    def from_queue(raw: object) -> object:
        properties = raw.get("properties") if isinstance(raw, dict) else None
        if not isinstance(properties, dict) or not isinstance(properties.get("delivery_tag"), str):
            # kombu could not even record it; it has left the queue already, so it is only reported.
            log.warning("malformed broker message dropped", extra={"queue": queue})
            return None
        info = properties.get("delivery_info")
        info = dict(info) if isinstance(info, dict) else {}
        info[SOURCE_QUEUE] = queue
        if restore_here:
            info["exchange"], info["routing_key"] = "", queue
        properties["delivery_info"] = info
        return deliver(raw)

    return from_queue


class Transport(kombu_redis.Transport):
    Channel = Channel


class SocketTransport(Transport):
    """The same transport on a unix socket, for a broker URL of the form ``socket:///path`` (see `celery_url`).

    kombu reads the transport from a ``redis+socket://`` URL itself (as its stock Redis transport), so the
    worker is handed the ``socket://`` remainder with this class; it keeps that URL whole, because the
    channel parses ``socket://`` hosts, and shows it as the ``redis+socket://`` URL it came from.
    """

    can_parse_url = True

    def as_uri(self, uri: str, include_password: bool = False, mask: str = "**") -> str:
        parts = urlsplit(uri)
        netloc = parts.netloc
        if parts.password is not None and not include_password:
            netloc = netloc.replace(f":{parts.password}@", f":{mask}@")
        return f"redis+{parts.scheme}://{netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")


def celery_transport(url: str) -> tuple[str, str] | None:
    """The (broker URL, transport) a Celery app is given for a Redis broker URL this module serves, else None."""
    if url.startswith("redis://"):
        return url, NAME
    if url.startswith("redis+socket://"):
        return url[len("redis+") :], SOCKET_NAME
    return None
