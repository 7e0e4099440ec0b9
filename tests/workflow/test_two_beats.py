"""Two beats at once: sweeps are serialised by the advisory lock and never re-send a step twice.

The worker here consumes only the `default` and `sweep` queues (`workflow.sweep_due` runs on the latter);
the steps under test are refunds, whose messages go to the `money` queue that nobody consumes, so every send
a sweep makes stays in Redis where the test can count it. A long redelivery grace means a correct sweeper sends
each due step exactly once however many sweeps run; an overlapping pair of sweeps would send it twice.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import select, text

from tests.harness import PYTHON, Proc, wait_for

pytestmark = pytest.mark.worker

CELERY = [PYTHON, "-m", "celery", "-A", "cancelflow.worker.app"]
STEPS = 20


@pytest.fixture(scope="module")
def procs(database: str) -> Iterator[dict[str, Proc]]:
    from cancelflow.config import get_settings
    from tests.conftest import OUTPUT_DIR

    if not get_settings().require_broker_url().startswith("redis"):
        pytest.skip("counts messages in the Redis broker (the RabbitMQ run covers the flows only)")
    workdir: Path = OUTPUT_DIR / "stack-test_two_beats"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    env = {**os.environ, "CANCELFLOW_REDELIVERY_GRACE": "3600", "CANCELFLOW_LOG_JSON": "true"}
    running = {
        "worker": Proc(
            "worker",
            [*CELERY, "worker", "--loglevel", "INFO", "--concurrency", "4", "-Q", "default,sweep",
             "-n", f"two-beats-{os.getpid()}@%h", "--without-gossip", "--without-mingle"],
            workdir / "logs" / "worker.log",
            env,
        ),
        **{
            name: Proc(
                name,
                [*CELERY, "beat", "--loglevel", "INFO", "-s", str(workdir / f"{name}-schedule")],
                workdir / "logs" / f"{name}.log",
                env,
            )
            for name in ("beat1", "beat2")
        },
    }  # fmt: skip
    try:
        for proc in running.values():
            proc.start()
        wait_for(lambda: "ready." in running["worker"].log_text(), timeout=60, what="worker ready")
        yield running
    finally:
        for proc in running.values():
            proc.stop()


def _broker() -> redis.Redis:
    from cancelflow.config import get_settings

    return redis.Redis.from_url(get_settings().require_broker_url())


def sends_per_step(step_ids: set[int]) -> dict[int, int]:
    """How many `payments.refund` messages for each of `step_ids` wait in the money queue."""
    client = _broker()
    counts = dict.fromkeys(step_ids, 0)
    for key in client.scan_iter(match="money*"):
        if client.type(key) != b"list":
            continue
        for raw in client.lrange(key, 0, -1):
            message = json.loads(raw)
            if message["headers"].get("task") != "payments.refund":
                continue
            args = json.loads(base64.b64decode(message["body"]))[0]
            if args and args[0] in counts:
                counts[args[0]] += 1
    return counts


def sweeps_run(worker: Proc) -> int:
    return sum(
        1 for line in worker.log_text().splitlines() if "workflow.sweep_due[" in line and "succeeded" in line
    )


def lock_skips(worker: Proc) -> int:
    return worker.log_text().count("another sweep holds the lock; skipping")


def _due_steps() -> set[int]:
    from cancelflow.db import transaction
    from cancelflow.models import WorkflowStep
    from cancelflow.models.enums import StepKind, StepStatus
    from cancelflow.services.clock import now

    tag = secrets.token_hex(6)
    with transaction() as session:
        rows = [
            WorkflowStep(
                request_id=None,
                kind=StepKind.refund,
                status=StepStatus.pending,
                attempt=0,
                max_attempts=8,
                next_attempt_at=now() - timedelta(minutes=1),
                idempotency_key=f"two-beats:{tag}:{n}",
                result={},
                version=1,
            )
            for n in range(STEPS)
        ]
        session.add_all(rows)
        session.flush()
        return {row.id for row in rows}


def _swept(step_ids: set[int]) -> bool:
    from cancelflow.db import transaction
    from cancelflow.models import WorkflowStep
    from cancelflow.services.clock import now

    with transaction() as session:
        times = session.scalars(
            select(WorkflowStep.next_attempt_at).where(WorkflowStep.id.in_(step_ids))
        ).all()
    return all(t > now() + timedelta(minutes=30) for t in times)


def test_two_beats_never_send_a_step_twice(procs: dict[str, Proc]) -> None:
    from cancelflow.db import get_engine
    from cancelflow.services.steps import SWEEP_LOCK_KEY

    worker = procs["worker"]
    # Given both beats sending sweeps and the sweep lock held elsewhere (an operator's `cancelflow sweep`)
    for beat in ("beat1", "beat2"):
        wait_for(
            lambda b=beat: "Sending due task workflow.sweep_due" in procs[b].log_text(),  # type: ignore[misc]
            timeout=30,
            what=f"{beat} sending sweeps",
        )
    with get_engine().connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": SWEEP_LOCK_KEY})
        try:
            step_ids = _due_steps()
            skips = lock_skips(worker)
            # When sweeps run while it is held, they do nothing
            wait_for(lambda: lock_skips(worker) >= skips + 3, timeout=30, what="sweeps skipping on the lock")
            assert sends_per_step(step_ids) == dict.fromkeys(step_ids, 0)
            assert not _swept(step_ids)
        finally:
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": SWEEP_LOCK_KEY})
            holder.commit()

    # Then once it is free, the steps are swept, and many more sweeps from both beats follow
    wait_for(lambda: _swept(step_ids), timeout=30, what="due steps swept")
    after = sweeps_run(worker)
    wait_for(lambda: sweeps_run(worker) >= after + 6, timeout=30, what="six more sweeps")

    # And each step was sent exactly once, whatever the number of beats and sweeps
    assert sends_per_step(step_ids) == dict.fromkeys(step_ids, 1)
    for beat in ("beat1", "beat2"):
        assert procs[beat].log_text().count("Sending due task workflow.sweep_due") >= 2
