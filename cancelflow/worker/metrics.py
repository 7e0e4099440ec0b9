"""Task latency histograms for Prometheus, observed around every task the worker runs.

`cancelflow_task_duration_seconds{task}` is observed from Celery's `task_prerun`/`task_postrun` signals
in whichever process runs the task. With a prefork pool that is a child process, so when
CANCELFLOW_WORKER_METRICS_PORT is set the worker uses prometheus_client's multiprocess mode: every
child writes its samples to files under PROMETHEUS_MULTIPROC_DIR (a fresh temporary directory when the
variable is unset) and the main process serves their sum on that port. Without the port nothing is
served and each process keeps its own in-memory histogram.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from celery import Celery, signals

from cancelflow.config import get_settings
from cancelflow.services.steps import TASK_FOR_KIND
from cancelflow.worker.intake_guard import refused_counter

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

_started: dict[str, float] = {}
_histogram: Histogram | None = None
_step_histogram: Histogram | None = None
_forged: Counter | None = None

# Every task that takes a row id (a step, a delivery, a job): each refuses an id that is not its own kind.
ID_TASKS = (*dict.fromkeys(TASK_FOR_KIND.values()), "webhooks.deliver", "exports.run", "tags.bulk")
_multiprocess_dir: Path | None = None


def task_duration() -> Histogram:
    """The histogram, created on first use: after `worker_init` chose the value store for the pool."""
    global _histogram
    if _histogram is None:
        from prometheus_client import Histogram

        _histogram = Histogram(
            "cancelflow_task_duration_seconds",
            "Time a Celery task took to run, by task name.",
            ["task"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, float("inf")),
        )
    return _histogram


def step_duration() -> Histogram:
    """`cancelflow_step_duration_seconds{task,chained}`: every workflow step a worker ran, by its task and
    whether it ran from its own message (`false`) or in-process after the step before it (`true`)."""
    global _step_histogram
    if _step_histogram is None:
        from prometheus_client import Histogram

        _step_histogram = Histogram(
            "cancelflow_step_duration_seconds",
            "Time a workflow step took to run, by step task and whether it ran chained after the step before.",
            ["task", "chained"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, float("inf")),
        )
    return _step_histogram


def forged_tasks() -> Counter:
    """`cancelflow_forged_tasks_total{task,reason}`: messages refused for naming a row the task must not
    act on. Every (task, reason) pair is created at zero, so the series exist before the first refusal."""
    global _forged
    if _forged is None:
        from prometheus_client import Counter

        from cancelflow.errors import Refused

        _forged = Counter(
            "cancelflow_forged_tasks",
            "Task messages refused: the id named no row, or a row of a kind the task does not run.",
            ["task", "reason"],
        )
        for task in ID_TASKS:
            for reason in Refused.reasons:
                _forged.labels(task=task, reason=reason)
    return _forged


def _use_multiprocess_dir() -> Path:
    """Point prometheus_client at a clean multiprocess directory before any metric value exists.

    prometheus_client picks its value store when it is first imported; resetting `values.ValueClass`
    makes metrics created from here on (ours, in the pool children forked later) write mmap files.
    """
    from prometheus_client import values

    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        # Files from a previous run of this worker would be added to this run's numbers.
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="cancelflow-prometheus-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    values.ValueClass = values.get_value_class()
    return path


@signals.worker_init.connect
def _serve_metrics(sender: object = None, **_: object) -> None:
    """Main worker process, before the pool forks: serve the pool's histograms when a port is set.

    Every task the worker knows gets its (empty) series at once, so the family and each label value are
    there from the first scrape rather than from each task's first run.
    """
    global _multiprocess_dir
    port = get_settings().worker_metrics_port
    if port is None:
        return
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    _multiprocess_dir = _use_multiprocess_dir()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    histogram = task_duration()  # created now so that every forked child inherits the multiprocess store
    for name in _task_names(sender):
        histogram.labels(task=name)
    steps_histogram = step_duration()
    for name in dict.fromkeys(TASK_FOR_KIND.values()):
        for chained in ("false", "true"):
            steps_histogram.labels(task=name, chained=chained)
    forged_tasks()
    refused_counter()
    start_http_server(port, registry=registry)


def _task_names(worker: object) -> list[str]:
    """The names of cancelflow's tasks registered in the worker's app (Celery's own left out)."""
    app: Celery | None = getattr(worker, "app", None)
    if app is None:
        return []
    app.loader.import_default_modules()
    return sorted(name for name in app.tasks if not name.startswith("celery."))


@signals.worker_shutdown.connect
def _remove_multiprocess_dir(**_: object) -> None:
    # Only the directory this process made; a configured one belongs to the operator.
    if _multiprocess_dir is not None and _multiprocess_dir.name.startswith("cancelflow-prometheus-"):
        shutil.rmtree(_multiprocess_dir, ignore_errors=True)


@signals.worker_process_shutdown.connect
def _mark_child_dead(pid: int | None = None, **_: object) -> None:
    if _multiprocess_dir is not None:
        from prometheus_client import multiprocess

        # Gauges of a dead child are dropped; its histogram samples stay counted (they are cumulative).
        multiprocess.mark_process_dead(pid or os.getpid())


@signals.task_prerun.connect
def _task_started(task_id: str | None = None, **_: object) -> None:
    if task_id is not None:
        _started[task_id] = time.monotonic()


@signals.task_postrun.connect
def _task_finished(task_id: str | None = None, task: object = None, **_: object) -> None:
    started = _started.pop(task_id, None) if task_id is not None else None
    if started is None or task is None:
        return
    task_duration().labels(task=getattr(task, "name", "unknown")).observe(time.monotonic() - started)
