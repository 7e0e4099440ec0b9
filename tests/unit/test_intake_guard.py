"""The intake guard's decisions, on kombu messages built in-process (the real broker paths: tests/security)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from kombu import Connection
from kombu.message import Message
from kombu.transport import redis as kombu_redis

from cancelflow.worker import broker, intake_guard
from cancelflow.worker.config import INTAKE_QUEUE


def message(task: str, embed: dict[str, Any] | None = None, **delivery_info: Any) -> Message:
    body = json.dumps([[], {"client_request_id": "x"}, embed or {}])
    msg = Message(
        body=body,
        content_type="application/json",
        content_encoding="utf-8",
        headers={"task": task, "id": "t1"},
        delivery_info=delivery_info,
    )
    msg.accept = {"application/json"}
    return msg


@pytest.mark.parametrize(
    ("delivery_info", "expected"),
    [
        ({"exchange": INTAKE_QUEUE, "routing_key": INTAKE_QUEUE}, True),  # RabbitMQ reports the exchange
        ({"exchange": "", "routing_key": INTAKE_QUEUE, broker.SOURCE_QUEUE: INTAKE_QUEUE}, True),  # Redis
        ({"exchange": "money", "routing_key": "money", broker.SOURCE_QUEUE: INTAKE_QUEUE}, True),  # forged
        ({"exchange": "money", "routing_key": "money"}, False),
        ({"exchange": "", "routing_key": "money", broker.SOURCE_QUEUE: "money"}, False),
    ],
)
def test_where_a_message_came_from(delivery_info: dict[str, Any], expected: bool) -> None:
    assert intake_guard.from_intake(message("cancellations.submit", **delivery_info)) is expected


@pytest.mark.parametrize(
    ("task", "embed", "reason"),
    [
        ("cancellations.submit", {}, None),
        ("cancellations.submit", {"callbacks": None, "errbacks": None, "chain": None, "chord": None}, None),
        ("payments.refund", {}, "task"),
        ("cancellations.close", {}, "task"),
        ("cancellations.submit", {"callbacks": [{"task": "payments.refund", "args": [1]}]}, "follow_up"),
        ("cancellations.submit", {"errbacks": [{"task": "payments.refund"}]}, "follow_up"),
        ("cancellations.submit", {"chain": [{"task": "payments.refund"}]}, "follow_up"),
        ("cancellations.submit", {"chord": {"task": "payments.refund"}}, "follow_up"),
    ],
)
def test_what_an_intake_message_may_be(task: str, embed: dict[str, Any], reason: str | None) -> None:
    assert intake_guard.refusal(task, message(task, embed), None) == reason
    assert reason is None or reason in intake_guard.REFUSAL_REASONS


def test_the_refusal_counter_has_every_reason_before_the_first_refusal() -> None:
    from prometheus_client import REGISTRY

    intake_guard.refused_counter()
    for reason in intake_guard.REFUSAL_REASONS:
        found = REGISTRY.get_sample_value("cancelflow_intake_refused_total", {"reason": reason})
        assert found is not None, reason


def test_protocol_1_and_unreadable_bodies() -> None:
    submit = message("cancellations.submit")
    assert intake_guard.refusal("cancellations.submit", submit, {"task": "cancellations.submit"}) is None
    v1_linked = {"task": "cancellations.submit", "callbacks": [{"task": "payments.refund"}]}
    assert intake_guard.refusal("cancellations.submit", submit, v1_linked) == "follow_up"
    odd = Message(body="[1, 2]", content_type="application/json", headers={"task": "cancellations.submit"})
    odd.accept = {"application/json"}
    assert intake_guard.refusal("cancellations.submit", odd, None) == "body"


def test_the_guard_runs_other_queues_untouched_and_drops_refused_intake_messages() -> None:
    ran: list[Message] = []
    rejected: list[bool] = []

    def strategy(msg: Message, payload: Any, *args: Any, **kwargs: Any) -> None:
        ran.append(msg)

    guard = intake_guard.guarded("payments.refund", strategy, ())
    internal = message("payments.refund", exchange="money", routing_key="money")
    guard(internal, None, None, None, None)
    assert ran == [internal]

    forged = message("payments.refund", exchange=INTAKE_QUEUE, routing_key=INTAKE_QUEUE)
    forged.reject_log_error = lambda logger, errors, requeue=False: rejected.append(requeue)  # type: ignore[method-assign]
    guard(forged, None, None, None, None)
    assert ran == [internal]
    assert rejected == [False]


def test_a_worker_on_another_redis_transport_will_not_consume_the_intake_queue() -> None:
    from cancelflow.worker.app import celery_app

    def consumer(transport_cls: type) -> Any:
        transport = transport_cls(client=Connection("redis://127.0.0.1:1/0"))
        return SimpleNamespace(app=celery_app, connection=SimpleNamespace(transport=transport))

    with pytest.raises(RuntimeError, match="intake"):
        intake_guard.check_transport(consumer(kombu_redis.Transport))
    intake_guard.check_transport(consumer(broker.Transport))
    intake_guard.check_transport(consumer(broker.SocketTransport))
