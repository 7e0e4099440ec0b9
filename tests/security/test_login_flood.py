"""A burst of parallel logins: their password hashes run a few at a time on worker threads
(`CANCELFLOW_LOGIN_CONCURRENCY`), and logins waiting for their turn hold no thread, so every other request
is still served while the burst lasts. Real HTTP (uvicorn); the hash is held on a gate, not timed."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from cancelflow.api.app import create_app
from cancelflow.config import get_settings
from cancelflow.services import users
from tests.harness import serving

BURST = 48  # more than the threads the server runs blocking routes on (anyio's default: 40)


@pytest.fixture
def server(database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(get_settings(), "login_concurrency", 1)
    monkeypatch.setattr(get_settings(), "login_limit_per_address", "1000 per minute")
    with serving(create_app()) as address:
        yield f"http://{address}"


def test_a_login_burst_hashes_one_at_a_time_and_other_requests_are_served(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    lock = threading.Lock()
    inside = peak = 0
    entered = threading.Semaphore(0)

    def held_check(password: str, stored: str) -> bool:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
        entered.release()
        gate.wait(timeout=60)
        with lock:
            inside -= 1
        return False

    monkeypatch.setattr(users, "check_password", held_check)

    def attempt(i: int) -> int:
        body = {"username": f"flood-{uuid.uuid4().hex[:8]}-{i}", "password": "guess"}
        return httpx.post(f"{server}/api/v1/auth/login/", json=body, timeout=90).status_code

    with ThreadPoolExecutor(max_workers=BURST) as pool:
        futures = [pool.submit(attempt, i) for i in range(BURST)]
        try:
            # Given one login inside its hash and the rest of the burst sent
            assert entered.acquire(timeout=30), "no login reached the password check"
            # When another request comes while the burst waits
            health = httpx.get(f"{server}/healthz", timeout=20)
            # Then it is answered, and no second hash started beside the first
            assert health.status_code == 200
            assert not entered.acquire(timeout=1)
        finally:
            gate.set()
        codes = [f.result() for f in futures]
    assert codes == [400] * BURST
    assert peak == 1
