"""The Redis transport keeps one client per channel pool; the configuration picks it for redis:// only."""

from __future__ import annotations

import os
import uuid

import pytest
from kombu import Connection

from cancelflow.config.settings import Settings
from cancelflow.worker import broker
from cancelflow.worker.config import celery_config


@pytest.mark.parametrize(
    ("url", "transport", "celery_url"),
    [
        ("redis://127.0.0.1:6379/0", broker.NAME, "redis://127.0.0.1:6379/0"),
        # kombu would take the transport from the scheme: the worker gets the socket URL with this one.
        ("redis+socket:///tmp/r.sock", broker.SOCKET_NAME, "socket:///tmp/r.sock"),
        (
            "rediss://cache.example:6380/0",
            None,
            "rediss://cache.example:6380/0",
        ),  # TLS: kombu's own transport
        ("amqp://guest:guest@127.0.0.1:5672//", None, "amqp://guest:guest@127.0.0.1:5672//"),
    ],
)
def test_the_transport_is_chosen_for_plain_redis_urls(
    url: str, transport: str | None, celery_url: str
) -> None:
    config = celery_config(Settings(database_url="postgresql://x@127.0.0.1/x", broker_url=url))
    assert config.get("broker_transport") == transport
    assert config["broker_url"] == celery_url


def test_a_socket_url_is_shown_as_the_redis_socket_url_it_came_from() -> None:
    conn = Connection("socket://u:secret@/tmp/r.sock", transport=broker.SOCKET_NAME)
    assert conn.hostname == "socket://u:secret@/tmp/r.sock"
    assert conn.as_uri() == "redis+socket://u:**@/tmp/r.sock"
    assert conn.as_uri(include_password=True) == "redis+socket://u:secret@/tmp/r.sock"


def test_a_channel_reuses_its_client_until_its_pool_is_replaced() -> None:
    url = os.environ["CANCELFLOW_BROKER_URL"]
    if not url.startswith("redis://"):
        pytest.skip("the Redis transport is only used with a redis:// broker")
    queue = f"test-broker-{uuid.uuid4().hex}"
    with Connection(url, transport=broker.NAME) as conn:
        channel = conn.default_channel
        assert isinstance(channel, broker.Channel)
        first = channel._create_client()
        assert channel._create_client() is first
        assert first.connection_pool is channel.pool

        simple = conn.SimpleQueue(queue)
        simple.put({"n": 1})
        first_message = simple.get(timeout=5)
        assert first_message.payload == {"n": 1}
        first_message.ack()

        channel._disconnect_pools()  # what kombu does after a connection error
        replaced = channel._create_client()
        assert replaced is not first
        assert replaced.connection_pool is channel.pool
        simple.put({"n": 2})
        message = simple.get(timeout=5)
        assert message.payload == {"n": 2}
        message.ack()
        simple.clear()
        simple.close()


def test_closing_a_channel_whose_connection_is_gone_is_a_connection_error_not_a_crash() -> None:
    """When Redis restarts, Celery's consumer releases the connection and then closes its channels, which
    restore their unacknowledged messages; the connection is gone by then. That must be an error the
    consumer ignores (a broker connection error), not an AttributeError that stops the worker."""
    from kombu.common import ignore_errors
    from redis.exceptions import ConnectionError as RedisConnectionError

    url = os.environ["CANCELFLOW_BROKER_URL"]
    if not url.startswith("redis://"):
        pytest.skip("the Redis transport is only used with a redis:// broker")
    queue = f"test-broker-{uuid.uuid4().hex}"
    conn = Connection(url, transport=broker.NAME)
    simple = conn.SimpleQueue(queue)
    try:
        simple.put({"n": 1})
        unacked = simple.get(timeout=5)  # delivered, not acknowledged: the channel must restore it on close
        channel = simple.channel
        assert isinstance(channel, broker.Channel)
        channel._disconnect_pools()  # the connection error
        conn.transport.client = None  # and the connection released, as the consumer does before closing

        with pytest.raises(RedisConnectionError):
            channel._connparams()
        assert RedisConnectionError in conn.connection_errors
        ignore_errors(conn, channel.close)  # what the consumer calls: nothing escapes
        assert channel.closed
        assert unacked.payload == {"n": 1}
    finally:
        with Connection(url, transport=broker.NAME) as clean:
            clean.SimpleQueue(queue).clear()
