"""cancelflow's Celery app with settings overridden from `CANCELFLOW_BENCH_CELERY` (a JSON object).

For measuring a setting before adopting it (`bench/workflow.py --set worker_prefetch_multiplier=4`):
the worker and beat run `-A bench.tuned_app`, and the bench process applies the same overrides.
"""

from __future__ import annotations

import json
import os

from cancelflow.worker.app import celery_app

OVERRIDES_ENV = "CANCELFLOW_BENCH_CELERY"


def overrides() -> dict[str, object]:
    loaded = json.loads(os.environ.get(OVERRIDES_ENV) or "{}")
    assert isinstance(loaded, dict)
    return loaded


celery_app.conf.update(overrides())
app = celery_app
