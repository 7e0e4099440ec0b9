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

A broker that keeps its contents (the embedded Redis writes an append-only file) comes back with the marker,
so nothing is swept; what it kept is queued again. But not what the worker held: a message the worker has
taken (prefetched and waiting for a pool process, or waiting for its countdown) sits in Redis's unacked
index, and when the connection breaks Celery drops those it has not started (they cannot be acknowledged on
the lost channel). kombu gives them back to their queue when it closes the channel, but it closes it while
the broker is away, so the give-back fails and they would wait there for the visibility timeout (an hour)
and their steps for the sweeper's redelivery grace. `HeldMessages` gives them back once the consumer has
connected again: every message the lost channel delivered and that was neither acknowledged nor is still
running, moved from the unacked index to the front of its queue (kombu's own restore, one transaction per
message, a no-op for one that is no longer there: a broker that came back empty, or a give-back done
already). One the worker had handed to a pool process just before the loss may thereby run twice; a step
runs once all the same (the row claim), as for any duplicate the visibility timeout would bring.
"""

from __future__ import annotations

import secrets
from typing import Any, cast

import structlog
from celery import Celery, bootsteps
from celery.worker import state as worker_state
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


def held_tags(qos: kombu_redis.QoS) -> list[str]:
    """The delivery tags of the messages a channel's QoS delivered and that were not acknowledged."""
    acknowledged = qos._dirty or set()  # acknowledged, not yet dropped from the delivered
    return [tag for tag in list(qos._delivered or ()) if tag not in acknowledged]


def running_tags() -> set[str]:
    """The delivery tags of the messages this worker's pool is running (they are acknowledged when done)."""
    tags: set[str] = set()
    for request in list(worker_state.active_requests):
        tag = request.message.delivery_tag
        if tag is not None:
            tags.add(str(tag))
    return tags


def give_back(channel: kombu_redis.Channel, lost: list[kombu_redis.QoS], *, running: set[str]) -> int:
    """Move the messages that the channels of `lost` held and that are not running to the front of their
    queues, through `channel` (the consumer's new one); returns how many tags were given back."""
    given = 0
    with channel.conn_or_acquire() as client:
        for qos in lost:
            for tag in held_tags(qos):
                if tag in running:
                    continue
                qos.restore_by_tag(tag, client=client)  # a tag no longer in the index restores nothing
                if qos._delivered is not None:
                    qos._delivered.pop(tag, None)
                given += 1
    return given


class HeldMessages(bootsteps.StartStopStep):
    """After the consumer reconnects: give back what its lost connection held and will not run."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.current: kombu_redis.QoS | None = None  # the QoS of the task consumer's channel
        self.lost: list[kombu_redis.QoS] = []  # those of earlier connections, until their messages are back

    def start(self, c: Any) -> None:
        channel = c.task_consumer.channel
        if not isinstance(channel, kombu_redis.Channel):
            return  # RabbitMQ requeues a lost connection's unacknowledged messages itself
        if self.current is not None:
            self.lost.append(self.current)
        qos = channel.qos
        assert isinstance(qos, kombu_redis.QoS)  # the Redis channel's
        self.current = qos
        if not self.lost:
            return
        try:
            given = give_back(channel, self.lost, running=running_tags())
        except Exception:  # the broker went again: the next connection tries again
            log.exception("could not give back the messages held when the broker connection was lost")
            return
        self.lost.clear()
        if given:
            log.warning("gave back the messages held when the broker connection was lost", messages=given)
