"""Catch up at once when the broker loses its messages, instead of after the redelivery grace.

Redis without persistence comes back from a restart empty, and a flush empties it too: every message a
step was waiting for is gone, and the sweeper would only re-send each step once its redelivery grace
(120 s by default) is over. So the broker carries a marker (`MARKER_KEY`), set when absent. A process that
finds it absent knows the broker is new or has lost its contents, sets it again and asks for one sweep of
every step sent before now (`workflow.sweep_lost`): the steps whose messages may be gone are re-sent at
once. Duplicates of messages that did survive are harmless (a step runs only once).

Two places look: a consumer step that runs each time the worker's consumer (re)connects, which sees a
restart within a second of the broker's return, and the beat's regular sweep, which sees a flush. Only the
first to find the marker absent sets it, so one loss asks for one sweep. RabbitMQ keeps its quorum queues
across restarts: nothing is looked at there.

The look is one `SET NX` on a connection of the app's broker connection pool (`app.pool`, the one its
producers publish with), which stays open between beat ticks: a connection made for each look cost two
Redis connections and their handshakes (`HELLO`, `CLIENT SETINFO`, `PING`), 5-10 ms per tick, for a
command of 0.1 ms. A connection that went stale (Redis restarted) is reconnected by redis-py's retry.
"""

from __future__ import annotations

import secrets
from typing import Any, cast

import structlog
from celery import Celery, bootsteps
from kombu import Connection
from kombu.transport import redis as kombu_redis

log = structlog.get_logger(__name__)

MARKER_KEY = "cancelflow:broker-marker"
SWEEP_TASK = "workflow.sweep_lost"


def broker_was_emptied(app: Celery) -> bool:
    """True once per loss: the broker (Redis) holds no marker, and this call has set it."""
    pooled = cast(Connection, app.pool.acquire(block=True))  # the stubs type the pool's items as producers
    with pooled as conn:
        if conn.transport.driver_type != "redis":
            return False
        channel = conn.default_channel
        assert isinstance(channel, kombu_redis.Channel)  # the redis driver's channel, ours or kombu's
        with channel.conn_or_acquire() as client:
            return bool(client.set(MARKER_KEY, secrets.token_hex(8), nx=True))


def ask_for_sweep(app: Celery) -> None:
    app.send_task(SWEEP_TASK)


class BrokerLossCheck(bootsteps.StartStopStep):
    """After the consumer (re)connects: if the broker lost its messages, ask for a sweep of them now."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        try:
            if broker_was_emptied(c.app):
                log.warning("the broker has no record of earlier messages; sweeping the steps in flight now")
                ask_for_sweep(c.app)
        except Exception:  # the broker went again: the beat's sweep looks too
            log.exception("could not check the broker for lost messages")
