"""A step whose message arrives while PostgreSQL refuses connections runs once it is back, in seconds:
the worker re-sends the message instead of leaving the step to the sweeper's redelivery grace."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from cancelflow.models import WorkflowStep
from cancelflow.models.enums import StepKind
from tests.harness import Stack, wait_for
from tests.workflow.conftest import make_order, make_service, wait_status

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def stack(database: str) -> Iterator[Stack]:
    from tests.conftest import OUTPUT_DIR

    workdir: Path = OUTPUT_DIR / "stack-test_db_away"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    # A grace far beyond the test: the sweeper leaves alone what the worker's retry must bring back.
    running = Stack(workdir, env_overrides={"CANCELFLOW_REDELIVERY_GRACE": "3600"}).start()
    try:
        yield running
    finally:
        running.stop()


def _database_connections(allowed: bool) -> None:
    """Let the test database take connections, or refuse new ones and end the open ones."""
    from tests.conftest import TEST_DB, _admin_execute

    _admin_execute(f'ALTER DATABASE "{TEST_DB}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')
    if not allowed:
        where = f"datname = '{TEST_DB}' AND pid <> pg_backend_pid()"  # the run's own name, not input
        _admin_execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {where}")  # noqa: S608


def test_a_step_failing_while_the_database_is_away_runs_when_it_returns(stack: Stack) -> None:
    from cancelflow.db import get_engine, transaction
    from cancelflow.services import intake
    from cancelflow.worker.app import celery_app

    # Given a request whose validate step is due, and whose message was not sent
    service = make_service(stack, policy="accept")
    cid = secrets.token_hex(8)
    with transaction() as session:
        result = intake.submit(
            session,
            {"client_request_id": cid, "order_item": make_order(service)["items"][0]["id"], "reason": 1},
        )
        session.info.pop("cancelflow.pending_sends", None)
        step_id = session.scalars(
            select(WorkflowStep.id).where(
                WorkflowStep.request_id == result.request.id, WorkflowStep.kind == StepKind.validate
            )
        ).one()
        # Due to the sweeper only in an hour: just the worker's own retry can bring the step back in time.
        session.execute(
            update(WorkflowStep)
            .where(WorkflowStep.id == step_id)
            .values(next_attempt_at=func.now() + timedelta(hours=1))
        )
    get_engine().dispose()
    worker = stack.procs["worker"]
    before = len(worker.log_text())
    try:
        # When the database refuses connections and the step's message arrives
        _database_connections(False)
        celery_app.send_task("cancellations.validate", args=[step_id])
        # (the worker tried it and found the database away)
        wait_for(
            lambda: "OperationalError" in worker.log_text()[before:],
            timeout=30,
            what="a failed try of the step",
        )
    finally:
        _database_connections(True)
    # Then the step runs once the database is back (not after the hour-long redelivery grace)
    wait_status(cid, "approved", "completed", timeout=30)
    assert "database is away; retrying the message" in worker.log_text()[before:]
