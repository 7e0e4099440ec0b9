"""`X-Forwarded-For` is believed only from a configured proxy: the API as `cancelflow run` starts it
(`cli.run.child_specs`, a real uvicorn process) counts login attempts by the peer's address, so a
client cannot dodge the per-address limit by sending a new forwarded address with every guess."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cancelflow.config.settings import Settings
from tests.harness import Proc, child_spec, free_port, wait_for

LIMIT = 3


def start_api(output_dir: Path, forwarded_allow_ips: str) -> tuple[Proc, str]:
    port = free_port()
    # One process: the counts below are kept in its memory.
    settings = Settings(
        api_host="127.0.0.1", api_port=port, forwarded_allow_ips=forwarded_allow_ips, api_workers=1
    )
    spec = child_spec(settings, "api", output_dir)
    env = {
        **os.environ,
        # Counts of this process alone, so an earlier run's attempts from 127.0.0.1 never count here.
        "CANCELFLOW_THROTTLE_URL": "memory://",
        "CANCELFLOW_LOGIN_LIMIT_PER_ADDRESS": f"{LIMIT} per minute",
    }
    proc = Proc("api", list(spec.argv), output_dir / f"api-{port}.log", env)
    proc.start()
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.alive(), proc.log_text()
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=60, what="API healthy")
    return proc, url


def guesses(url: str, n: int) -> list[int]:
    return [
        httpx.post(
            f"{url}/api/v1/auth/login/",
            json={"username": f"who-{uuid.uuid4().hex[:8]}", "password": "guess"},
            headers={"X-Forwarded-For": f"192.0.2.{i + 1}"},
            timeout=30,
        ).status_code
        for i in range(n)
    ]


@pytest.fixture
def api(request: pytest.FixtureRequest, output_dir: Path, database: str) -> Iterator[str]:
    proc, url = start_api(output_dir, request.param)
    try:
        yield url
    finally:
        proc.stop()


@pytest.mark.parametrize("api", [""], indirect=True, ids=["no proxy configured"])
def test_a_forged_forwarded_address_is_ignored(api: str) -> None:
    assert guesses(api, LIMIT + 1) == [400] * LIMIT + [429]


@pytest.mark.parametrize("api", ["127.0.0.1"], indirect=True, ids=["proxy on loopback"])
def test_a_configured_proxy_is_believed(api: str) -> None:
    # Each guess comes through the trusted proxy for another client: none of them fills an allowance.
    assert guesses(api, LIMIT + 1) == [400] * (LIMIT + 1)
