"""Continuing in-process: a task that commits a step runs the successor steps it made instead of publishing them.

A step row is the checkpoint; the broker is needed only where the flow waits or crosses to another pool.
When a step's transaction commits, each follow-up send it asked for is taken here rather than published if

* it is a step task's send, a step id and no countdown (a countdown is a retry's backoff: a wait);
* the task's queue is one this worker consumes (another pool's work still crosses the broker);
* the chain is within its bounds: at most `CANCELFLOW_CHAIN_MAX_STEPS` successors per task execution, none
  taken or started later than `CANCELFLOW_CHAIN_MAX_SECONDS` after the execution began.

The task then claims and runs each taken step in a transaction of its own, through the same claim its own
task would make (`steps.claim`: FOR UPDATE SKIP LOCKED, a kind that task runs, pending and due), so a
duplicate message of that step finds it locked or done. A taken step the time bound stops is published
then. A process that dies between two steps loses nothing: the successor's row is committed, pending and
due; the redelivered message of the step before finds its step done and goes on to the steps made after it
(`steps.successors_of`), and failing that the sweeper re-sends them after the redelivery grace.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Final

import structlog

from cancelflow.config import get_settings
from cancelflow.services import after_commit
from cancelflow.services.after_commit import Send
from cancelflow.services.steps import KINDS_FOR_TASK

if TYPE_CHECKING:
    from celery import Celery

log = structlog.get_logger(__name__)

STEP_TASKS: Final = frozenset(KINDS_FOR_TASK)


@lru_cache(maxsize=1)
def _consumed(app: Celery) -> frozenset[str]:
    # Set by the worker from `-Q` before its pool forks; a process that is no worker consumes every queue.
    return frozenset(app.amqp.queues.consume_from)


@lru_cache(maxsize=64)
def _queue_of(app: Celery, task: str) -> str | None:
    queue = app.amqp.router.route({}, task, (), {}).get("queue")
    name = getattr(queue, "name", queue)
    return name if isinstance(name, str) else None


def runs_here(app: Celery, task: str) -> bool:
    """Whether `task`'s messages go to a queue this process's worker consumes."""
    return _queue_of(app, task) in _consumed(app)


@dataclass
class Chain:
    """The successor steps one task execution takes from its commits, in the order they were made."""

    app: Celery
    max_steps: int
    deadline: float  # time.monotonic() past which nothing more is taken or started
    taken: deque[Send] = field(default_factory=deque)
    ran: int = 0

    @classmethod
    def begin(cls, app: Celery) -> Chain | None:
        """A chain for the execution starting now, or None when chaining is off (CANCELFLOW_CHAIN_MAX_STEPS=0)."""
        settings = get_settings()
        if settings.chain_max_steps <= 0:
            return None
        return cls(
            app, settings.chain_max_steps, time.monotonic() + settings.chain_max_seconds.total_seconds()
        )

    def take(self, send: Send) -> bool:
        """Keep `send` to run here (True), or leave it to be published (False)."""
        if not (
            send.task in STEP_TASKS
            and send.countdown is None
            and not send.kwargs
            and len(send.args) == 1
            and isinstance(send.args[0], int)
        ):
            return False
        if self.ran + len(self.taken) >= self.max_steps or time.monotonic() >= self.deadline:
            return False
        if not runs_here(self.app, send.task):
            return False
        self.taken.append(send)
        return True

    def resume(self, successors: list[tuple[str, int]]) -> None:
        """Take the steps made after a step found done: what a process that died after it did not run. Those
        not taken here stay committed and due, and the sweeper re-sends them."""
        for task, step_id in successors:
            self.take(Send(task, (step_id,)))

    def next(self) -> tuple[str, int] | None:
        """The next step to run in-process as (task, step id); None when the chain is over. Past the time
        bound the steps still taken are published instead."""
        if not self.taken:
            return None
        if time.monotonic() >= self.deadline:
            rest = list(self.taken)
            self.taken.clear()
            log.info("chain bound reached; publishing its next steps", published=len(rest), ran=self.ran)
            after_commit.deliver(rest)
            return None
        send = self.taken.popleft()
        self.ran += 1
        step_id = send.args[0]
        assert isinstance(step_id, int)
        return send.task, step_id
