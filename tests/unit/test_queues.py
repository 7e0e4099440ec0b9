"""Webhook deliveries and beat's sweeps never share a queue with a request's steps, and `make run` consumes
every queue: a slow storefront receiver or a deep queue cannot delay a step or expire a sweep."""

from __future__ import annotations

from pathlib import Path

from cancelflow.cli import run as run_mod
from cancelflow.config import get_settings
from cancelflow.services.steps import TASK_FOR_KIND
from cancelflow.worker.app import celery_app
from cancelflow.worker.config import QUEUES, celery_config

STEP_TASKS = {"cancellations.submit", *TASK_FOR_KIND.values()}
# Expiring export files runs where the files are, on the bulk worker; every other beat task is a sweep.
SWEEPS = {entry["task"] for entry in celery_config(get_settings())["beat_schedule"].values()} - {
    "exports.expire"
} | {"workflow.sweep_lost"}  # asked for by a worker that finds the broker emptied, not by beat


def _queue(task: str) -> str:
    return str(celery_app.amqp.router.route({}, task)["queue"].name)


def test_webhook_deliveries_have_a_queue_no_step_uses() -> None:
    assert _queue("webhooks.deliver") == "webhooks"
    assert "webhooks" not in {_queue(t) for t in STEP_TASKS}


def test_export_expiry_runs_on_the_bulk_worker_that_holds_the_files() -> None:
    assert _queue("exports.expire") == "bulk"


def test_every_beat_sweep_runs_on_the_sweep_queue_alone() -> None:
    assert {"workflow.sweep_due", "webhooks.sweep", "fulfillment.chase_replies"} <= SWEEPS
    assert {_queue(t) for t in SWEEPS} == {"sweep"}
    assert "sweep" not in {_queue(t) for t in STEP_TASKS | {"webhooks.deliver"}}


def test_make_run_consumes_every_queue_with_sweeps_and_webhooks_apart(tmp_path: Path) -> None:
    specs = run_mod.child_specs(
        get_settings(),
        data_dir=tmp_path,
        sandbox_config=tmp_path / "sb.json",
        flower_user="u",
        flower_password="p",
    )
    consumed = [
        set(argv[argv.index("-Q") + 1].split(","))
        for argv in (list(s.argv) for s in specs)
        if "worker" in argv and "-Q" in argv
    ]
    assert set().union(*consumed) == set(QUEUES)
    for queues in consumed:
        if queues & {"webhooks", "sweep"}:
            assert not queues & {_queue(t) for t in STEP_TASKS}, queues
