"""Property: any task handed any id that is not its own pending work changes nothing and moves no money.

Every task that takes an id is called the way the worker calls it (the registered Celery task, in this
process, on real PostgreSQL), with the id of a step of every kind in every status, with job ids of the other
job kind, with ids naming nothing and with values that are no id at all. After each call the world's
statuses, attempts, versions, events and money are what they were, and the money rows are exactly the
movements the plans were legitimately paid. The only calls left out are the legal ones: a step task with a
pending step of a kind it runs, a job task with its own job.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from cancelflow.models.enums import StepStatus
from cancelflow.services import after_commit, steps
from tests.security.world import World, money, snapshot

STEP_TASKS = tuple(dict.fromkeys(steps.TASK_FOR_KIND.values()))
JOB_TASKS = ("exports.run", "tags.bulk")
ALL_TASKS = (*STEP_TASKS, "webhooks.deliver", *JOB_TASKS)
NOT_AN_ID = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.integers(max_value=0),
    st.integers(min_value=2**63),
    st.lists(st.integers(), max_size=2),
)


def _legal(world: World, task: str, value: Any) -> bool:
    if task in STEP_TASKS and type(value) is int and value in world.steps:
        kind, status = world.steps[value]
        return steps.TASK_FOR_KIND[kind] == task and status == StepStatus.pending
    own_job = {"exports.run": world.export_job, "tags.bulk": world.bulk_job}
    return isinstance(value, str) and own_job.get(task) == value


def _forged_count(task: str) -> float:
    return sum(
        REGISTRY.get_sample_value("cancelflow_forged_tasks_total", {"task": task, "reason": reason}) or 0.0
        for reason in ("bad_id", "unknown_id", "wrong_kind", "mismatch")
    )


def _call(task_name: str, value: Any) -> Any:
    from cancelflow.worker.app import celery_app

    celery_app.loader.import_default_modules()
    return celery_app.tasks[task_name](value)


@st.composite
def forged_calls(draw: st.DrawFn, world: World) -> tuple[str, Any]:
    task = draw(st.sampled_from(ALL_TASKS))
    value = draw(
        st.one_of(
            st.sampled_from(sorted(world.steps)),
            st.sampled_from([world.bulk_job, world.export_job]),
            st.uuids().map(str),  # no such job
            st.integers(min_value=2**62, max_value=2**63 - 1),  # no such row
            NOT_AN_ID,
        )
    )
    if task == "webhooks.deliver" and type(value) is int and 0 < value < 2**62:
        value = str(value)  # a delivery id is any int: only a value that is no id can be told apart here
    assume(not _legal(world, task, value))  # the legal call runs the work: not a forgery
    return task, value


def test_world_has_every_kind_in_every_status(world: World) -> None:
    # The money the world legitimately moved: one loyalty credit per paid plan, keyed by its money step
    assert world.planned
    for plan_id, rows in world.planned.items():
        assert [key for key, _ in rows] == [f"{plan_id}:loyalty_money:1"]


def test_a_forged_task_changes_nothing(world: World, sent: list[after_commit.Send]) -> None:
    before = snapshot(world)

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(call=forged_calls(world))
    def forged(call: tuple[str, Any]) -> None:
        task, value = call
        assert not _legal(world, task, value)
        counted = _forged_count(task)
        sent.clear()

        outcome = _call(task, value)

        assert outcome in {"refused", "already_handled", "locked_or_missing", "missing"}, (
            task,
            value,
            outcome,
        )
        assert snapshot(world) == before, (task, value, outcome)
        assert money(world) == world.planned
        assert sent == [], (task, value, sent)
        # A refusal is counted once; a duplicate of finished work is not a forgery
        assert _forged_count(task) == counted + (outcome == "refused"), (task, value, outcome)
        if task in STEP_TASKS and type(value) is int and value in world.steps:
            kind, _ = world.steps[value]
            expected = "already_handled" if steps.TASK_FOR_KIND[kind] == task else "refused"
            assert outcome == expected, (task, value, kind, outcome)

    forged()
