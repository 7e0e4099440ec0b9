"""Chaos: Redis restarts (comes back empty) under a steady HTTP create load.

While the broker is away the API cannot publish the first step of a request it has just stored: the row
is committed, the API answers 201 all the same (the send after commit is logged, never raised), and the
sweeper sends the step once the broker is back. Messages the restart destroyed are re-sent at once: the
worker finds the broker emptied when it reconnects (`worker.broker_loss`). The stack runs on the production
timers (a 120 s redelivery grace), so a step left to the grace fails the phase's 10 s recovery bound. One
summary line, as the other phases; no worker or beat may exit on the lost connection.
"""

from __future__ import annotations

import pytest

from tests.chaos.conftest import RedisServer
from tests.chaos.test_chaos_database import PRODUCTION_TIMERS, _run_phase, baseline_p95
from tests.harness import Stack

pytestmark = pytest.mark.worker
STACK_ENV = PRODUCTION_TIMERS


def test_redis_restart_under_http_load(
    chaos_stack: Stack, chaos_redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    _run_phase(
        "Redis restart",
        chaos_stack,
        fault=chaos_redis.stop,
        recover=chaos_redis.start,
        messages=False,  # a storefront cannot publish while its broker is down
        baseline=baseline_p95(chaos_stack, messages=False),
        # No process may exit on the lost connection: the worker's consumer and beat reconnect by themselves.
        capsys=capsys,
    )
