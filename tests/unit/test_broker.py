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
