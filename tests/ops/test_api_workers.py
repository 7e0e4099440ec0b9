"""The API as `cancelflow run` starts it with several uvicorn workers (`CANCELFLOW_API_WORKERS`): what the
processes share lives outside them, so a caller sees one API whichever process answers.

Each request below goes on a new connection, which the kernel hands to any of the worker processes: login
attempts are counted once across them (the throttle's Redis), a console session signed in on one process
is honoured by the others, and the request a POST created is read back, listed and counted by
`/metrics` whichever process answers.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from cancelflow.config.settings import Settings
from tests.console.support import sign_in, staff_user
from tests.factories import auth, new_order, token_key
from tests.harness import Proc, child_spec, free_port, wait_for

WORKERS = 2
LIMIT = 3


@pytest.fixture(scope="module")
def api(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    output_dir: Path = tmp_path_factory.mktemp("api-workers")
    port = free_port()
    settings = Settings(api_host="127.0.0.1", api_port=port, api_workers=WORKERS)
    spec = child_spec(settings, "api", output_dir)
    assert list(spec.argv)[-2:] == ["--workers", str(WORKERS)]
    env = {
        **os.environ,
        # Counted in the broker's Redis (the default store), per username: this test's own user only.
        "CANCELFLOW_LOGIN_LIMIT_PER_USERNAME": f"{LIMIT} per minute",
        "CANCELFLOW_LOGIN_LIMIT_PER_ADDRESS": "10000 per minute",
    }
    env.pop("CANCELFLOW_THROTTLE_URL", None)
    proc = Proc("api", list(spec.argv), output_dir / f"api-{port}.log", env)
    proc.start()
    url = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        assert proc.alive(), proc.log_text()
        try:
            healthy = httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
        return healthy and len(_workers(proc)) == WORKERS

    try:
        wait_for(serving, timeout=90, what="API workers serving")
        yield url
    finally:
        proc.stop()


def _workers(proc: Proc) -> list[psutil.Process]:
    """uvicorn's worker processes (spawned by multiprocessing from its supervisor)."""
    found = []
    for child in proc.children():
        with contextlib.suppress(psutil.Error):
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
    return found


def test_login_attempts_are_counted_once_across_the_processes(api: str) -> None:
    username = f"nobody-{uuid.uuid4().hex[:8]}"
    answers = [
        httpx.post(f"{api}/api/v1/auth/login/", json={"username": username, "password": "guess"}, timeout=30)
        for _ in range(LIMIT + 4)
    ]
    assert [a.status_code for a in answers] == [400] * LIMIT + [429] * 4


def test_a_console_session_is_honoured_by_every_process(api: str) -> None:
    name = staff_user()
    with httpx.Client(base_url=api, timeout=30) as browser:
        signed_in = sign_in(browser, name)
        assert signed_in.status_code == 303, signed_in.text
        cookies = dict(browser.cookies)
    for _ in range(2 * WORKERS + 2):  # a new connection each time: any process may answer
        page = httpx.get(f"{api}/console/requests", cookies=cookies, timeout=30, follow_redirects=False)
        assert page.status_code == 200, page.headers.get("location")


def test_a_created_request_is_seen_by_every_process(api: str) -> None:
    headers = auth(token_key("staff"))
    body = {"order_item": new_order().item_id, "reason": 1, "cancellation_type": "cancel", "quantity": 1}
    created = httpx.post(
        f"{api}/api/v1/cancellation_requests/",
        json=body,
        headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    request_id = created.json()["id"]
    for _ in range(2 * WORKERS + 2):
        read = httpx.get(f"{api}/api/v1/cancellation_requests/{request_id}/", headers=headers, timeout=30)
        assert read.status_code == 200
        assert read.json()["id"] == request_id
    metrics = httpx.get(f"{api}/metrics", timeout=30)
    assert metrics.status_code == 200
    assert "cancelflow_" in metrics.text
