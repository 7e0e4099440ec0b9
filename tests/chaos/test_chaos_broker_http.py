"""Chaos: Redis restarts (comes back empty) under a steady HTTP create load.

While the broker is away the API cannot publish the first step of a request it has just stored: the row
is committed, the API answers 201 all the same (the send after commit is logged, never raised), and the
sweeper sends the step once the broker is back. Messages the restart destroyed are re-sent by the sweeper
after the redelivery grace (the suite's short timers here). One summary line, as the other phases; a worker
or beat that exits on the lost connection is restarted, as the deployment's process manager does, and
counted there.
"""

from __future__ import annotations

import pytest

from tests.chaos.conftest import RedisServer
from tests.chaos.test_chaos_database import _run_phase
from tests.harness import Stack

pytestmark = pytest.mark.worker


def test_redis_restart_under_http_load(
    chaos_stack: Stack, chaos_redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    _run_phase(
        "Redis restart",
        chaos_stack,
        fault=chaos_redis.stop,
        recover=chaos_redis.start,
        messages=False,  # a storefront cannot publish while its broker is down
        # Celery's Redis consumer can exit on the lost connection (kombu restoring unacked messages on a
        # closed channel); a process manager restarts it, and the summary counts it.
        revive_crashed=True,
        capsys=capsys,
    )
