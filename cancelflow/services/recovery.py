"""Catch up at once when the database server comes back from a restart, instead of after the grace.

Every new pooled connection reads `pg_postmaster_start_time()`. When a process that had already seen the
server sees a later start, the server restarted under it: work whose message a worker took while the
server was away is lost (the step could not run, nor record its failure). The process then asks for one
sweep right away (`workflow.sweep_due`), which re-sends those steps (`steps.sweep_due`). Every process
with a sender (worker children, the API) notices on its own; the sweep's advisory lock and its re-stamp
make the extra sweeps no-ops. A process that never connected before the restart has nothing to compare
and asks for nothing: the beat's regular sweep still covers everything.

A step whose first message could not be published after its commit (the broker is away) is marked due
at once, so the sweeper sends it on its first run once the broker is back, not after the grace.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, event, update

from cancelflow.services import after_commit

log = logging.getLogger(__name__)

SWEEP_TASK = "workflow.sweep_due"

_lock = threading.Lock()
_seen_start: datetime | None = None


def server_started(started: datetime) -> bool:
    """Note the server's start time; True when it is later than the one this process saw before."""
    global _seen_start
    with _lock:
        previous, _seen_start = _seen_start, max(started, _seen_start or started)
    return previous is not None and started > previous


def _start_time(dbapi_connection: Any) -> datetime | None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SELECT pg_postmaster_start_time()")
        row = cursor.fetchone()
    finally:
        cursor.close()
        dbapi_connection.rollback()  # hand the connection over with no transaction open
    return row[0] if row else None


@event.listens_for(Engine, "connect")
def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    try:
        started = _start_time(dbapi_connection)
    except Exception:  # not PostgreSQL, or the connection went again: the beat's sweep covers it
        log.debug("could not read the database server's start time", exc_info=True)
        return
    if started is None or not server_started(started):
        return
    log.warning("the database server restarted at %s; sweeping the steps in flight now", started)
    try:
        after_commit.send_now(after_commit.Send(SWEEP_TASK, ()))
    except Exception:  # the broker is away too: the beat's sweep will do it
        log.exception("could not ask for a sweep after the database restart")


def _mark_unsent_steps_due(failed: list[after_commit.Send]) -> None:
    from cancelflow.db import transaction
    from cancelflow.models import WorkflowStep
    from cancelflow.models.enums import StepStatus
    from cancelflow.services.clock import now
    from cancelflow.services.steps import TASK_FOR_KIND

    step_tasks = set(TASK_FOR_KIND.values())
    # A retry's countdown send already has its due time in the row; only immediate sends are advanced.
    ids = [s.args[0] for s in failed if s.task in step_tasks and s.args and s.countdown is None]
    if not ids:
        return
    with transaction() as session:
        session.execute(
            update(WorkflowStep)
            .where(WorkflowStep.id.in_(ids), WorkflowStep.status == StepStatus.pending)
            .values(next_attempt_at=now())
        )
    log.info("%d steps not sent after commit are due for the sweeper now", len(ids))


after_commit.on_send_failure(_mark_unsent_steps_due)
