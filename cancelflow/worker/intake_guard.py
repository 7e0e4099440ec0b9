"""The worker's guard on the intake queue: what a storefront publishes can only ever be a submission.

Storefronts publish to the intake exchange with a broker user that may write nothing else (see
`storefront_access`), so whatever arrives on the intake queue may come from outside. A Celery message
names the task to run and may carry further tasks to send after it (link, link_error, chain, chord); a
worker runs any registered task it is handed. This consumer step wraps the worker's task strategies so
that a message consumed from the intake queue runs only if it is an intake task (`cancellations.submit`)
with no further tasks attached, and that Celery can read (a bad id, eta or expires would otherwise raise out of
the consumer and stop the worker); anything else is refused before any task code runs: logged, counted
(`cancelflow_intake_refused_total{reason}`) and dropped, changing nothing.

Where a message came from is taken from what its publisher cannot write: on RabbitMQ the exchange the
broker reports (a storefront may only write to the intake exchange, which routes to the intake queue
alone); on Redis the queue cancelflow's transport read it from (`broker.SOURCE_QUEUE`). A worker that
consumes the intake queue through another Redis transport cannot tell, and refuses to start.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final, Protocol

import structlog
from celery import bootsteps

from cancelflow.worker import broker
from cancelflow.worker.config import INTAKE_QUEUE

if TYPE_CHECKING:
    from celery import Celery
    from kombu import Connection
    from kombu.message import Message
    from prometheus_client import Counter

INTAKE_TASKS: Final = frozenset({"cancellations.submit"})
# Celery's keys for the tasks a message asks the worker to send after it (protocol 2 embed, protocol 1 body).
FOLLOW_UP_KEYS: Final = ("callbacks", "errbacks", "chain", "chord")
# Why a message is refused: not an intake task, follow-up tasks attached, a body it cannot read, headers Celery
# cannot take.
REFUSAL_REASONS: Final = ("task", "follow_up", "body", "invalid")

log = structlog.get_logger(__name__)
_reject_log = logging.getLogger(__name__)
_refused: Counter | None = None


class Strategy(Protocol):
    """What Celery calls for each message of a task: (message, payload, ack, reject, callbacks)."""

    def __call__(self, message: Message, payload: object, /, *args: object, **kwargs: object) -> object: ...


class TaskConsumer(Protocol):
    """The parts of Celery's consumer the guard reads and changes."""

    app: Celery
    connection: Connection
    strategies: dict[str, Strategy]
    connection_errors: tuple[type[BaseException], ...]


def refused_counter() -> Counter:
    global _refused
    if _refused is None:
        from prometheus_client import Counter

        _refused = Counter(
            "cancelflow_intake_refused_total",
            "Messages on the intake queue refused before running, by reason.",
            ["reason"],
        )
        for reason in REFUSAL_REASONS:  # every series exists, at zero, before the first refusal
            _refused.labels(reason=reason)
    return _refused


def from_intake(message: Message) -> bool:
    info = message.delivery_info or {}
    return INTAKE_QUEUE in (info.get("exchange"), info.get(broker.SOURCE_QUEUE))


def refusal(task_name: str, message: Message, payload: object) -> str | None:
    """Why an intake message must not run, or None if it may."""
    if task_name not in INTAKE_TASKS:
        return "task"
    if payload is None:  # protocol 2: [args, kwargs, embed]; the worker decodes it again later
        try:
            body = message.decode()
        except Exception:  # noqa: BLE001 -- whatever the serializer raises, the body is unreadable
            return "body"
        if not (isinstance(body, list | tuple) and len(body) == 3 and isinstance(body[2], dict | None)):
            return "body"
        embed = body[2] or {}
    elif isinstance(payload, dict):  # protocol 1
        embed = payload
    else:
        return "body"
    if any(embed.get(key) for key in FOLLOW_UP_KEYS):
        return "follow_up"
    return None


class _Guarded:
    """A task strategy that runs a message from any queue but intake as before, and an intake message only
    when `refusal` finds nothing against it."""

    intake_guarded: Final = True

    def __init__(
        self, task_name: str, strategy: Strategy, connection_errors: tuple[type[BaseException], ...]
    ) -> None:
        self.task_name = task_name
        self.strategy = strategy
        self.connection_errors = connection_errors

    def __call__(self, message: Message, payload: object, /, *args: object, **kwargs: object) -> object:
        task_name, strategy = self.task_name, self.strategy
        if not from_intake(message):
            return strategy(message, payload, *args, **kwargs)
        reason = refusal(task_name, message, payload)
        if reason is None:
            try:
                return strategy(message, payload, *args, **kwargs)
            except Exception:  # Celery could not take the message (no id, a bad eta or expires …)
                # Raised out of the consumer, it would stop the worker: Celery calls that unrecoverable.
                log.warning("intake message unreadable", exc_info=True)
                reason = "invalid"
        headers = message.headers if isinstance(message.headers, dict) else {}
        log.warning(
            "intake message refused",
            reason=reason,
            task=str(task_name)[:200],
            task_id=str(headers.get("id"))[:200],
        )
        refused_counter().labels(reason=reason).inc()
        message.reject_log_error(_reject_log, self.connection_errors, requeue=False)
        return None


def guarded(
    task_name: str, strategy: Strategy, connection_errors: tuple[type[BaseException], ...]
) -> Strategy:
    return _Guarded(task_name, strategy, connection_errors)


def check_transport(consumer: TaskConsumer) -> None:
    """Refuse to consume the intake queue through a Redis transport that does not mark a message's queue."""
    queues = {q.name for q in consumer.app.amqp.queues.consume_from.values()}
    transport = consumer.connection.transport
    if (
        INTAKE_QUEUE in queues
        and getattr(transport, "driver_type", None) == "redis"
        and not isinstance(transport, broker.Transport)
    ):
        raise RuntimeError(
            f"the {INTAKE_QUEUE!r} queue needs cancelflow's Redis transport (a redis:// or redis+socket:// broker "
            f"URL) to tell storefront messages apart; serve it from a worker on such a URL or leave it out of -Q"
        )


class IntakeGuard(bootsteps.StartStopStep):
    """Wraps every task strategy after the task consumer (re)starts; see the module docstring."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: TaskConsumer) -> None:
        check_transport(c)
        for name, strategy in list(c.strategies.items()):
            if not getattr(strategy, "intake_guarded", False):
                c.strategies[name] = guarded(name, strategy, c.connection_errors)
