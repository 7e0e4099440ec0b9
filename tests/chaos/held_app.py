"""cancelflow's Celery app with one task more, for a test that needs the worker's pool process busy:
`tests.hold` runs until a file exists."""

from __future__ import annotations

import time
from pathlib import Path

from cancelflow.worker.app import celery_app


@celery_app.task(name="tests.hold", acks_late=True, ignore_result=True)
def hold(path: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


app = celery_app
