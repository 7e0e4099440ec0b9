"""The Celery configuration, derived from settings in this one place."""

from __future__ import annotations

from typing import NotRequired, TypedDict

from kombu import Exchange, Queue

from cancelflow.config.settings import Settings
from cancelflow.worker import broker as broker_transport

# The storefronts' queue; its exchange (of the same name) is the only one their broker user may write to.
INTAKE_QUEUE = "intake"
# `webhooks` and `sweep` are apart from the request's steps: a partner that answers slowly or not at all
# fills only its own queue, and the sweeps never wait behind anyone's work.
QUEUES = ("default", "route", "money", "bulk", INTAKE_QUEUE, "webhooks", "sweep")


class Route(TypedDict):
    queue: str


class TransportOptions(TypedDict, total=False):
    confirm_publish: bool  # RabbitMQ
    visibility_timeout: int  # Redis


class BeatEntry(TypedDict):
    task: str
    schedule: float
    options: dict[str, float]


class CeleryConfig(TypedDict):
    """The Celery settings cancelflow sets; Celery's own defaults hold for every other one."""

    broker_url: str
    broker_transport: NotRequired[str]
    broker_connection_retry_on_startup: bool
    broker_transport_options: TransportOptions
    task_serializer: str
    accept_content: list[str]
    result_serializer: str
    task_ignore_result: bool
    result_backend: None
    task_acks_late: bool
    task_reject_on_worker_lost: bool
    worker_prefetch_multiplier: int
    task_soft_time_limit: int
    task_time_limit: int
    worker_soft_shutdown_timeout: float
    worker_enable_soft_shutdown_on_idle: bool
    task_default_queue: str
    task_queues: list[Queue]
    task_routes: dict[str, Route]
    task_create_missing_queues: bool
    worker_send_task_events: bool
    task_send_sent_event: bool
    worker_hijack_root_logger: bool
    timezone: str
    enable_utc: bool
    beat_schedule: dict[str, BeatEntry]


ROUTES: dict[str, Route] = {
    "cancellations.submit": {"queue": INTAKE_QUEUE},
    "cancellations.route": {"queue": "route"},
    "fulfillment.*": {"queue": "route"},
    "payments.*": {"queue": "money"},
    "loyalty.*": {"queue": "money"},
    "tags.*": {"queue": "bulk"},
    "exports.*": {"queue": "bulk"},
    "decisions.*": {"queue": "bulk"},
    "webhooks.deliver": {"queue": "webhooks"},
    # Exact names win over the patterns above: every beat sweep runs on its own queue.
    "webhooks.sweep": {"queue": "sweep"},
    "workflow.sweep_due": {"queue": "sweep"},
    "workflow.sweep_lost": {"queue": "sweep"},
    "cancellations.prune_rejections": {"queue": "sweep"},
    "fulfillment.chase_replies": {"queue": "sweep"},
}


def celery_config(settings: Settings) -> CeleryConfig:
    broker = settings.require_broker_url()
    amqp = broker.startswith(("amqp://", "amqps://", "pyamqp://"))
    queue_arguments = {"x-queue-type": "quorum"} if amqp else None
    # Quorum queues keep countdowns (retry backoff) out of the worker through RabbitMQ's native delayed
    # delivery, which routes by topic; with direct exchanges a countdown would block a pool process.
    exchange_type = "topic" if amqp else "direct"
    transport_options: TransportOptions = {}
    if amqp:
        transport_options["confirm_publish"] = True
    else:
        transport_options["visibility_timeout"] = int(settings.visibility_timeout.total_seconds())
    served = broker_transport.celery_transport(broker)
    transport: str | None = None
    if served is not None:
        # kombu's Redis transport, one client per channel, messages marked with the queue they came from.
        broker, transport = served
    sweep_seconds = settings.sweep_interval.total_seconds()

    def every_sweep(task: str) -> BeatEntry:
        # Run every CANCELFLOW_SWEEP_INTERVAL; a run still queued when the next is due is dropped.
        return {"task": task, "schedule": sweep_seconds, "options": {"expires": max(1.0, sweep_seconds)}}

    config: CeleryConfig = {
        "broker_url": broker,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport_options,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        # At-least-once: a task is acknowledged after it ran, and redelivered if its process died.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Up to concurrency x multiplier messages reserved, unacknowledged: a killed worker's come back
        # through the visibility timeout, and their steps through the sweeper after the redelivery grace.
        "worker_prefetch_multiplier": settings.worker_prefetch_multiplier,
        "task_soft_time_limit": 120,
        "task_time_limit": 180,
        "worker_soft_shutdown_timeout": 10.0,
        "worker_enable_soft_shutdown_on_idle": True,
        "task_default_queue": "default",
        "task_queues": [
            Queue(name, Exchange(name, type=exchange_type), routing_key=name, queue_arguments=queue_arguments)
            for name in QUEUES
        ],
        "task_routes": ROUTES,
        "task_create_missing_queues": False,
        # Flower shows a task from the worker's `task-received` on and turns the workers' events on itself
        # (`enable_events` every 5 s), so they cost only while it watches (CANCELFLOW_WORKER_TASK_EVENTS for a
        # monitor that only listens); the producer's `task-sent` only adds a SENT state for queued tasks, at
        # the price of a second publish per task sent by every producer (a step sending its successor).
        "worker_send_task_events": settings.worker_task_events,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": {
            "workflow.sweep_due": every_sweep("workflow.sweep_due"),
            # Reminders and reply deadlines are database timers; this finds the due ones.
            "fulfillment.chase_replies": every_sweep("fulfillment.chase_replies"),
            # Webhook retries too far off for a broker countdown, and lost delivery messages.
            "webhooks.sweep": every_sweep("webhooks.sweep"),
            # Export files past CANCELFLOW_EXPORT_RETENTION (queue `bulk`: its worker holds the files).
            "exports.expire": every_sweep("exports.expire"),
            # Refused storefront messages past CANCELFLOW_REJECTED_MESSAGE_RETENTION.
            "cancellations.prune_rejections": every_sweep("cancellations.prune_rejections"),
        },
    }
    if transport is not None:
        config["broker_transport"] = transport
    return config
