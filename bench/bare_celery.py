"""A bare Celery app: the yardstick for cancelflow's own no-op rate.

Celery's default settings, one queue (Celery's default, `celery`), the broker the bench gives it
(`BARE_CELERY_BROKER`), and one task that counts itself in Redis (`BARE_CELERY_COUNTERS`) exactly as
`workflow.ping` does, so that the two workers differ only by what cancelflow adds around a task. Started by
`bench/workflow.py` as a real worker process:

    BARE_CELERY_BROKER=redis://127.0.0.1:6379/15 celery -A bench.bare_celery worker
"""

from __future__ import annotations

import functools
import os

import redis
from celery import Celery

PREFIX = "cancelflow:counter:"  # where `cancelflow.services.counters` keeps its counters
TASK = "bare.ping"

app = Celery("bare", broker=os.environ.get("BARE_CELERY_BROKER", "redis://127.0.0.1:6379/15"))


@functools.cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(os.environ.get("BARE_CELERY_COUNTERS", "redis://127.0.0.1:6379/15"))


@app.task(name=TASK)
def ping(counter_key: str | None = None) -> None:
    if counter_key:
        _client().incr(f"{PREFIX}{counter_key}")
