"""Bulk tag jobs: more than 1,000 ids through the API and a real worker, resuming after a crash, the CLI."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cancelflow.db import transaction
from tests.api.test_tags import make_requests, tagged_ids, unique
from tests.factories import token_headers
from tests.harness import Stack, wait_for

pytestmark = pytest.mark.worker
BASE = "/api/v1/cancellation_requests/"


@pytest.fixture(scope="module")
def auth(database: str) -> dict[str, str]:
    return token_headers("staff")


@pytest.fixture(scope="module")
def api(stack: Stack, auth: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, headers=auth, timeout=30) as client:
        yield client


def wait_job(api: httpx.Client, url: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = api.get(url).json()
        return job if job["status"] in ("done", "failed") else None

    return wait_for(finished, timeout=120, what=f"bulk job {url}")


class TestAsyncBulk:
    def test_more_than_1000_ids_run_as_a_job(self, api: httpx.Client) -> None:
        # Given 2,500 requests and two keys
        ids = make_requests(2500)
        a, b = unique(), unique()
        # When they are bulk-tagged through the API
        response = api.post(f"{BASE}bulk_add_tags/", json={"objects": [*ids, 2**62], "keys": [a, b]})
        # Then the answer is a job, which a worker finishes with every request tagged
        assert response.status_code == 202, response.text
        accepted = response.json()
        assert accepted["url"].endswith(f"/api/v1/bulk_jobs/{accepted['id']}/")
        job = wait_job(api, accepted["url"])
        assert job["status"] == "done", job
        assert (job["total"], job["done"], job["kind"]) == (2500, 2500, "tags.bulk_add")
        assert sorted(job["keys"]) == sorted([a, b])
        assert tagged_ids(a) == set(ids)
        assert tagged_ids(b) == set(ids)

        # And removing one key from 1,200 of them is a job too, leaving exactly the rest
        removed = api.post(f"{BASE}bulk_remove_tags/", json={"ids": ids[:1200], "keys": [a]})
        assert removed.status_code == 202, removed.text
        assert wait_job(api, removed.json()["url"])["status"] == "done"
        assert tagged_ids(a) == set(ids[1200:])
        assert tagged_ids(b) == set(ids)

    def test_unknown_job_is_404(self, api: httpx.Client) -> None:
        assert api.get(f"/api/v1/bulk_jobs/{uuid.uuid4()}/").status_code == 404
        assert api.get("/api/v1/bulk_jobs/not-a-uuid/").status_code == 404


class TestResume:
    def test_a_crashed_job_resumes_after_its_last_committed_chunk(self, database: str) -> None:
        from cancelflow.models import JobStatus
        from cancelflow.services import bulk

        ids = make_requests(2300)
        key = unique()
        with transaction() as session:
            job_id = bulk.create_job(session, "add", [key], ids=ids).id

        # Given a run that "crashes" after two chunks of 500
        assert bulk.drive(job_id, transaction, chunk_size=500, stop_after=2) == 2
        with transaction() as session:
            job = bulk.get_job(session, job_id)
            assert (job.status, job.done, job.last_id) == (JobStatus.running, 1000, ids[999])
        assert tagged_ids(key) == set(ids[:1000])

        # When it is run again, it continues from id ids[999], not from the start
        chunks = bulk.drive(job_id, transaction, chunk_size=500)
        assert chunks == 3  # 1300 rows left: 500 + 500 + 300
        with transaction() as session:
            job = bulk.get_job(session, job_id)
            assert (job.status, job.done, job.total) == (JobStatus.done, 2300, 2300)
            assert job.finished_at is not None
        assert tagged_ids(key) == set(ids)
        # And a finished job does nothing more
        assert bulk.drive(job_id, transaction, chunk_size=500) == 1

    def test_a_job_runs_at_its_stored_chunk_size_unless_the_caller_chooses_one(self, database: str) -> None:
        from cancelflow.services import bulk

        ids = make_requests(25)
        key = unique()
        with transaction() as session:
            job_id = bulk.create_job(session, "add", [key], ids=ids, chunk_size=10).id
        # Given no size from the caller, a chunk is the job's own 10 requests
        assert bulk.drive(job_id, transaction, stop_after=1) == 1
        with transaction() as session:
            assert bulk.get_job(session, job_id).done == 10
        # When the caller chooses 5, the 15 left take three chunks
        assert bulk.drive(job_id, transaction, chunk_size=5) == 3
        assert tagged_ids(key) == set(ids)

    def test_resume_of_a_removal_by_filter(self, database: str) -> None:
        from cancelflow.services import bulk

        email = f"{unique('cust')}@example.com"
        ids = make_requests(1200, status="approved", email=email)
        other = make_requests(10, status="waiting", email=email)
        key = unique()
        with transaction() as session:
            bulk.apply_to_ids(session, "add", ids[:1000], [key])
            bulk.apply_to_ids(session, "add", ids[1000:] + other, [key])
        with transaction() as session:
            job_id = bulk.create_job(
                session, "remove", [key], filters={"status": "approved", "email": email.upper()}
            ).id
        bulk.drive(job_id, transaction, chunk_size=400, stop_after=1)
        assert tagged_ids(key) == set(ids[400:] + other)
        bulk.drive(job_id, transaction, chunk_size=400)
        assert tagged_ids(key) == set(other)


class TestCli:
    def test_bulk_add_by_filter_inline(self, database: str) -> None:
        from cancelflow.cli.main import app

        email = f"{unique('cust')}@example.com"
        approved = make_requests(30, status="approved", email=email)
        make_requests(5, status="waiting", email=email)
        key = unique()
        result = CliRunner().invoke(
            app,
            [
                "tags",
                "bulk-add",
                key,
                "--filter",
                "status=approved",
                "--filter",
                f"email={email}",
                "--inline",
                "--chunk-size",
                "7",
            ],
        )
        assert result.exit_code == 0, result.output
        assert "done" in result.output
        assert tagged_ids(key) == set(approved)

        removed = CliRunner().invoke(
            app,
            [
                "tags",
                "bulk-remove",
                key,
                "-f",
                f"email={email}",
                "-f",
                "pk__gt=" + str(approved[9]),
                "--inline",
            ],
        )
        assert removed.exit_code == 0, removed.output
        assert tagged_ids(key) == set(approved[:10])

    def test_bad_filter_exits_2(self, database: str) -> None:
        from cancelflow.cli.main import app

        result = CliRunner().invoke(app, ["tags", "bulk-add", "x", "--filter", "status=nope", "--inline"])
        assert result.exit_code == 2
        assert "status" in result.output


class TestExportJob:
    def test_large_export_becomes_a_job_a_worker_writes(
        self, api: httpx.Client, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import csv
        import io

        from fastapi.testclient import TestClient

        from cancelflow.config import get_settings
        from tests.api.test_exports import EXPORT, export_app

        # Given a synchronous limit of 20 rows and 25 matching requests
        email = f"{unique('big')}@example.com"
        ids = make_requests(25, email=email)
        monkeypatch.setenv("CANCELFLOW_EXPORT_SYNC_MAX_ROWS", "20")
        get_settings.cache_clear()
        try:
            with TestClient(export_app()) as local:
                response = local.get(EXPORT, params={"export_format": "csv", "email": email})
        finally:
            monkeypatch.undo()
            get_settings.cache_clear()
        # Then the export is a job, which the worker finishes
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert response.json()["url"].endswith(f"/api/v1/exports/{job_id}/")
        early = api.get(f"/api/v1/exports/{job_id}/download/")
        assert early.status_code in (200, 409)  # 409 unless the worker was already done

        def finished() -> dict[str, Any] | None:
            job: dict[str, Any] = api.get(f"/api/v1/exports/{job_id}/").json()
            return job if job["status"] in ("done", "failed") else None

        job = wait_for(finished, timeout=120, what=f"export {job_id}")
        assert job["status"] == "done", job
        assert (job["done"], job["total"], job["format"]) == (25, 25, "csv")
        assert job["filters"] == {"order__customer__email__iexact": email}
        # And the file downloads, with every row
        download = api.get(job["download_url"])
        assert download.status_code == 200
        rows = list(csv.DictReader(io.StringIO(download.text)))
        assert [int(r["id"]) for r in rows] == ids

    def test_unknown_export_is_404(self, api: httpx.Client) -> None:
        assert api.get(f"/api/v1/exports/{uuid.uuid4()}/").status_code == 404
        assert api.get(f"/api/v1/exports/{uuid.uuid4()}/download/").status_code == 404
