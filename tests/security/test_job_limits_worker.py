"""Export retention and the statement timeout of export and bulk-tag jobs, with a real API, worker and beat.

* Retention: with `CANCELFLOW_EXPORT_RETENTION=1` the beat task `exports.expire` deletes a finished
  export's file and the job reads `expired`; its download is a 410.
* Statement timeout: a worker started with a 1 ms `CANCELFLOW_JOB_STATEMENT_TIMEOUT` cannot finish an
  export's first fetch or a bulk chunk; the job fails with that reason, once, instead of being retried into
  the same timeout (or hanging), and the bulk chunk writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_tags import make_requests, tagged_ids, unique
from tests.factories import token_headers
from tests.harness import Stack, clean_workdir, running, wait_for

pytestmark = pytest.mark.worker
BASE = "/api/v1/cancellation_requests/"


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, database: str) -> Iterator[Stack]:
    workdir = clean_workdir("stack-security-job-limits")
    stack = Stack(
        workdir,
        env_overrides={
            "CANCELFLOW_DATA_DIR": str(workdir / "data"),
            "CANCELFLOW_EXPORT_SYNC_MAX_ROWS": "0",  # every export is a job
            "CANCELFLOW_EXPORT_RETENTION": "1",
        },
    )
    with running(stack):
        yield stack


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, headers=token_headers("staff"), timeout=30) as client:
        yield client


def exports_dir(stack: Stack) -> Path:
    return Path(stack.env["CANCELFLOW_DATA_DIR"]) / "exports"


def wait_job(api: httpx.Client, url: str, *statuses: str) -> dict[str, Any]:
    def reached() -> dict[str, Any]:
        job: dict[str, Any] = api.get(url).json()
        return job if job["status"] in statuses else {}

    return wait_for(reached, timeout=120, what=f"job {url} in {statuses}")


def test_a_finished_export_expires_and_its_file_is_deleted(stack: Stack, api: httpx.Client) -> None:
    # Given an export job that a worker finished
    email = f"{unique('ret')}@example.com"
    make_requests(3, email=email)
    accepted = api.get(f"{BASE}detailed/", params={"export_format": "csv", "email": email})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    # When its retention has passed, the beat sweep has run
    job = wait_job(api, accepted.json()["url"], "expired", "failed")
    # Then the job reads expired, the file it wrote is gone and its download is a 410
    assert job["status"] == "expired", job
    assert (job["done"], job["download_url"]) == (3, None)
    assert job["finished_at"] is not None
    path = exports_dir(stack) / f"{job_id}.csv"
    log = stack.procs["worker"].log_text()
    assert f'"path": "{path}", "event": "export done"' in log  # the file was written ...
    assert not path.exists()  # ... and deleted
    assert not list(exports_dir(stack).glob(f"{job_id}*"))
    response = api.get(f"/api/v1/exports/{job_id}/download/")
    assert response.status_code == 410, response.text
    assert response.json() == {
        "detail": f"export {job_id} expired: its file was deleted after the retention period",
        "code": "export_expired",
    }


@pytest.fixture(scope="module")
def tiny_timeout_worker(stack: Stack) -> Stack:
    """Replace the stack's worker by one whose job statements may run 1 ms."""
    stack.procs["worker"].stop()
    normal_env = stack.env
    stack.env = {**normal_env, "CANCELFLOW_JOB_STATEMENT_TIMEOUT": "0.001"}
    try:
        stack.start_worker("worker-timeout")
    finally:
        stack.env = normal_env
    return stack


def test_an_export_over_the_statement_timeout_fails_with_that_reason(
    tiny_timeout_worker: Stack, api: httpx.Client
) -> None:
    # Given enough rows that the export's first fetch takes longer than 1 ms
    email = f"{unique('slow')}@example.com"
    make_requests(30_000, email=email)
    accepted = api.get(f"{BASE}detailed/", params={"export_format": "csv", "email": email})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    # When the worker runs it, Then it fails, saying why, and leaves no file
    job = wait_job(api, accepted.json()["url"], "done", "failed")
    assert job["status"] == "failed", job
    assert job["error"] == (
        "a query ran longer than the statement timeout (0.001 s, CANCELFLOW_JOB_STATEMENT_TIMEOUT)"
    )
    assert not list(exports_dir(tiny_timeout_worker).glob(f"{job_id}*"))
    log = tiny_timeout_worker.procs["worker-timeout"].log_text()
    assert "export stopped by the statement timeout" in log
    assert "export interrupted, retrying" not in log  # classified: not retried into the same timeout


def test_a_bulk_chunk_over_the_statement_timeout_fails_the_job_and_writes_nothing(
    tiny_timeout_worker: Stack, api: httpx.Client
) -> None:
    ids = make_requests(5000)
    keys = [unique() for _ in range(3)]
    accepted = api.post(f"{BASE}bulk_add_tags/", json={"objects": ids, "keys": keys})
    assert accepted.status_code == 202, accepted.text
    job = wait_job(api, accepted.json()["url"], "done", "failed")
    assert job["status"] == "failed", job
    assert job["error"] == (
        "a query ran longer than the statement timeout (0.001 s, CANCELFLOW_JOB_STATEMENT_TIMEOUT)"
    )
    assert job["done"] == 0
    for key in keys:
        assert tagged_ids(key) == set()
    assert "bulk job interrupted, retrying" not in tiny_timeout_worker.procs["worker-timeout"].log_text()
