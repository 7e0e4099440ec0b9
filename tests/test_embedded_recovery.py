"""`make run`'s supervisor keeps the stack up when its embedded PostgreSQL or Redis dies: it starts the
server that died again, on the same files and socket, says so, and leaves the children running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from contextlib import suppress
from pathlib import Path

import httpx
import pytest

from tests.factories import VALID_IBAN
from tests.harness import embedded_servers, free_port, kill_tree, wait_for
from tests.test_embedded import _server_pids, _sql, run_env

__all__ = ["run_env"]  # the fixture, used below by name


def _said(lines: list[str]) -> str:
    """What the supervisor printed, with the console's line wrapping undone."""
    return " ".join("".join(lines).split())


def _resume(pid: int) -> None:
    with suppress(ProcessLookupError):  # the test failed meanwhile and its teardown killed the stack
        os.kill(pid, signal.SIGCONT)


def _redis_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "redis" / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None


# How long the supervisor is held after Redis is killed, so that requests are created while it is away.
REDIS_AWAY_SECONDS = 4.0

RUN_THE_REAL_STACK = textwrap.dedent(
    """
    import sys
    from cancelflow.cli.run import run
    sys.exit(run(with_demo=True))
    """
)


@pytest.mark.timeout(420)
def test_the_real_stack_finishes_requests_in_flight_when_postgres_then_redis_is_killed(
    run_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run` as shipped (API, worker, beat, Flower, sandboxes; production timers): requests created
    before, during and after each kill all finish, and no process is restarted but the one killed."""
    from pgserver.utils import PostmasterInfo

    data_dir = run_env
    for name in ("FLOWER_PORT", "SANDBOX_FULFILLMENT_PORT", "SANDBOX_GATEWAY_PORT"):
        monkeypatch.setenv(f"CANCELFLOW_{name}", str(free_port()))
    gateway_port = os.environ["CANCELFLOW_SANDBOX_GATEWAY_PORT"]
    monkeypatch.setenv("CANCELFLOW_PAYMENT_GATEWAY_URL", f"http://127.0.0.1:{gateway_port}")
    monkeypatch.setenv("CANCELFLOW_REDELIVERY_GRACE", "120")
    monkeypatch.setenv("CANCELFLOW_SWEEP_INTERVAL", "10")
    api = f"http://127.0.0.1:{os.environ['CANCELFLOW_API_PORT']}"
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_THE_REAL_STACK],
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    created: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "cancelflow is running" in line:
                break
        else:
            raise AssertionError("".join(lines))
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
        reader.start()
        info = PostmasterInfo.read_from_pgdata(data_dir / "postgres")
        assert info is not None
        database_url = info.get_uri(database="cancelflow")
        items = [row[0] for row in _sql(database_url, "SELECT id FROM order_items ORDER BY id LIMIT 18")]
        key = json.loads((data_dir / "credentials.json").read_text())["staff_token"]
        postmaster, redis_pid = _server_pids(data_dir)
        statuses: list[int] = []

        def create(batch: list[int]) -> None:
            with httpx.Client(base_url=api, timeout=60) as client:
                for item in batch:
                    created.append(_post_until_accepted(client, key, item, statuses))

        create(items[:6])
        os.kill(postmaster, signal.SIGKILL)
        create(items[6:12])  # answered 503 until the new postmaster is up, then accepted
        wait_for(lambda: _server_pids(data_dir)[0] != postmaster, timeout=60, what="a new postmaster")
        os.kill(redis_pid, signal.SIGKILL)
        # Redis stays away for a few seconds, as on a loaded machine where the supervisor is slow to start it
        # again: the API commits these requests but cannot send their first steps (each send gives up after
        # Celery's publish retries, about 0.6 s), so they wait for the sweeper, not for the redelivery grace.
        os.kill(proc.pid, signal.SIGSTOP)
        resume = threading.Timer(REDIS_AWAY_SECONDS, _resume, (proc.pid,))
        resume.start()
        create(items[12:])
        resume.join()
        wait_for(lambda: _redis_pid(data_dir) not in (None, redis_pid), timeout=60, what="a new redis-server")

        info = PostmasterInfo.read_from_pgdata(data_dir / "postgres")
        assert info is not None
        database_url = info.get_uri(database="cancelflow")

        def finished() -> bool:
            open_steps = _sql(
                database_url,
                "SELECT count(*) FROM workflow_steps WHERE request_id = ANY(:ids) AND status = 'pending'",
                ids=created,
            )
            done = _sql(
                database_url,
                "SELECT count(*) FROM cancellation_requests WHERE id = ANY(:ids) "
                "AND status IN ('completed', 'rejected')",
                ids=created,
            )
            return open_steps == [(0,)] and done == [(len(created),)]

        # Far less than the 120 s redelivery grace a lost message would wait.
        try:
            wait_for(finished, timeout=60, interval=0.25, what=f"the {len(created)} requests finished")
        except AssertionError:
            for query in (
                "SELECT id, status FROM cancellation_requests WHERE id = ANY(:ids)",
                "SELECT request_id, kind, status, attempt, next_attempt_at, last_error FROM workflow_steps "
                "WHERE request_id = ANY(:ids) AND status <> 'done'",
            ):
                print(*_sql(database_url, query, ids=created), sep="\n")
            print((data_dir / "logs" / "worker.log").read_text()[-5000:])
            raise
        assert proc.poll() is None, "".join(lines)
        assert not [status for status in statuses if status >= 500 and status != 503], statuses
        for said in (
            "embedded PostgreSQL was down; running again",
            "embedded Redis exited with -9; restarted it",
        ):
            wait_for(lambda said=said: said in _said(lines), timeout=30, what=f"{said!r} printed")
        output = _said(lines)
        assert "exited with code" not in output, output  # no child died
        # The outage above did cover requests: their steps were marked due when their sends failed.
        api_log = (data_dir / "logs" / "api.log").read_text()
        assert "not sent after commit are due for the sweeper now" in api_log
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
    finally:
        # The supervisor's children lead process groups of their own: killing it alone would orphan them.
        kill_tree(proc, left_behind=lambda: embedded_servers(data_dir))
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0, "".join(lines)


def _post_until_accepted(client: httpx.Client, key: str, item: int, statuses: list[int]) -> int:
    body: dict[str, object] = {"order_item": item, "reason": 1, "quantity": 1}
    idempotency_key = uuid.uuid4().hex
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            response = client.post(
                "/api/v1/cancellation_requests/",
                json=body,
                headers={"Authorization": f"Token {key}", "Idempotency-Key": idempotency_key},
            )
        except httpx.TransportError:
            time.sleep(1)
            continue
        statuses.append(response.status_code)
        if response.status_code == 201:
            return int(response.json()["id"])
        if response.status_code == 400 and "iban" in response.json() and "iban" not in body:
            body = {**body, "iban": VALID_IBAN, "holder_name": "Bob Norman"}  # a cash-on-delivery order
            idempotency_key = uuid.uuid4().hex
            continue
        assert response.status_code == 503, response.text
        time.sleep(float(response.headers.get("Retry-After", "1")))
    raise AssertionError(f"POST for item {item} not accepted in 90 s")
