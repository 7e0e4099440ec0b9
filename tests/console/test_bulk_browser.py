"""The console's bulk actions in the system Chromium against a running stack with a real worker: 20,000
requests tagged through "all matching" with the progress bar reaching 100 %, a bulk approval confirmed
with its count whose requests then complete, exports downloaded and opened, axe-core on every new page,
and a bulk decision job that survives its worker process being killed. Screenshots under test-output/."""

from __future__ import annotations

import csv
import io
import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from cancelflow.db import transaction
from cancelflow.models import BulkJob, CancellationRequest, JobStatus
from cancelflow.models.enums import RequestStatus
from cancelflow.services import after_commit, bulk_decisions
from tests.api.test_tags import make_requests, tagged_ids, unique
from tests.console.support import staff_user, waiting_requests
from tests.console.test_browser import check_page, chromium, fresh, sign_in, stack
from tests.harness import Stack, wait_for

pytestmark = pytest.mark.worker
__all__ = ["chromium", "fresh", "stack"]  # the browser module's fixtures, shared with this module

PROGRESS = "Progress"


def _statuses(ids: list[int]) -> dict[int, RequestStatus]:
    with transaction() as session:
        rows = session.execute(
            select(CancellationRequest.id, CancellationRequest.status).where(CancellationRequest.id.in_(ids))
        )
        return {row[0]: row[1] for row in rows}


def _open_list(page: Any, **filters: str) -> None:
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    page.goto(f"/console/requests?{query}")
    page.get_by_role("heading", name="Cancellation requests").wait_for()


def _finished_job(page: Any) -> None:
    """Wait on a job page until its progress bar is full, without reloading the page."""
    page.evaluate("window.notReloaded = true")
    bar = page.get_by_role("progressbar", name=PROGRESS)
    bar.wait_for()
    page.wait_for_function(
        "() => { const p = document.getElementById('job-progress'); "
        "return p && p.value === p.max && document.body.innerText.includes('100 %'); }",
        timeout=120_000,
    )
    assert page.evaluate("window.notReloaded") is True  # htmx updated the bar in place


def test_bulk_tag_20000_requests_through_all_matching(fresh: Any, output_dir: Path) -> None:
    ids = make_requests(20_000)
    with transaction() as session:
        number = session.scalar(
            text(
                "SELECT o.number FROM orders o JOIN cancellation_requests r ON r.order_id = o.id WHERE r.id = :id"
            ),
            {"id": ids[0]},
        )
    key = unique("bulk")
    page = fresh().new_page()
    page.goto(f"/console/requests?order_number={number}")
    sign_in(page, staff_user())
    page.get_by_role("heading", name="Cancellation requests").wait_for()
    check_page(page, output_dir, "requests-bulk-bar")

    bar = page.get_by_role("form", name="Bulk actions")
    bar.get_by_label(re.compile(r"^Select all (about )?\d+ matching this filter$")).check()
    bar.get_by_label("Tag", exact=True).fill(key)
    bar.get_by_role("button", name="Add tag to selection").click()
    heading = page.get_by_role("heading", name=f"Confirm: Add tag “{key}” to 20000 requests")
    heading.wait_for()
    assert tagged_ids(key) == set()  # the confirmation moved nothing
    check_page(page, output_dir, "bulk-confirm")

    page.get_by_role("button", name=f"Add tag “{key}” to 20000 requests").click()
    page.wait_for_url(re.compile(r"/console/jobs/[0-9a-f-]{36}$"))
    _finished_job(page)
    assert page.get_by_role("status").inner_text() == "Status: done"
    assert "20000 of 20000" in page.inner_text("#job-live")
    check_page(page, output_dir, "bulk-job-done")
    assert tagged_ids(key) == set(ids)

    # The job stays listed under Jobs, reached through the navigation.
    job_url = page.url
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Jobs").click()
    page.get_by_role("heading", name="Jobs").wait_for()
    link = page.get_by_role("link", name=f"Add tag “{key}”")
    assert job_url.endswith(str(link.get_attribute("href")))
    check_page(page, output_dir, "jobs")


def test_bulk_approve_with_the_count_confirmed(fresh: Any, output_dir: Path) -> None:
    ids = waiting_requests(3)
    with transaction() as session:
        number = session.scalar(
            text(
                "SELECT o.number FROM orders o JOIN cancellation_requests r ON r.order_id = o.id WHERE r.id = :id"
            ),
            {"id": ids[0]},
        )
    page = fresh().new_page()
    page.goto(f"/console/requests?order_number={number}")
    sign_in(page, staff_user())
    page.get_by_role("heading", name="Cancellation requests").wait_for()
    # Two of the three rows, ticked by their names; the third is left waiting.
    for request_id in ids[:2]:
        page.get_by_role("checkbox", name=f"Select request {request_id}").check()
    page.get_by_role("button", name="Approve selection").click()
    page.get_by_role("heading", name="Confirm: Approve 2 requests").wait_for()
    assert "picked one by one" in page.inner_text("main")
    assert set(_statuses(ids).values()) == {RequestStatus.waiting}
    check_page(page, output_dir, "bulk-approve-confirm")

    page.get_by_role("button", name="Approve 2 requests").click()
    _finished_job(page)
    check_page(page, output_dir, "bulk-approve-done")
    # The approved requests move on through the workflow to the end; the third was not touched.
    wait_for(
        lambda: [_statuses(ids)[i] for i in ids] == [RequestStatus.completed] * 2 + [RequestStatus.waiting],
        timeout=120,
        what="the two approved requests completed",
    )
    with transaction() as session:
        actors = session.execute(
            text(
                "SELECT entity_id, data->>'actor' FROM events WHERE entity = 'request' "
                "AND to_status = 'approved' AND entity_id = ANY(:ids)"
            ),
            {"ids": ids},
        ).all()
    assert sorted(i for i, _ in actors) == ids[:2]
    assert all(re.fullmatch(r"staff \(user:\d+\)", str(actor)) for _, actor in actors)


def _export(page: Any, email: str, fmt: str, count: int) -> tuple[bytes, str]:
    """Export every request of `email` in `fmt` from the list; the downloaded bytes and their name."""
    page.goto(f"/console/requests?email={email}")
    bar = page.get_by_role("form", name="Bulk actions")
    bar.get_by_label(f"Select all {count} matching this filter").check()
    bar.get_by_label("Export format").select_option(fmt)
    bar.get_by_role("button", name="Export selection").click()
    page.get_by_role("button", name=f"Export {count} requests as {fmt.upper()}").click()
    _finished_job(page)
    link = page.get_by_role("link", name=f"Download the {fmt.upper()} file")
    answer = page.context.request.get(link.get_attribute("href"))
    assert answer.status == 200
    disposition = answer.headers["content-disposition"]
    assert re.fullmatch(rf'attachment; filename="cancellation_requests_[0-9a-f-]{{36}}\.{fmt}"', disposition)
    with page.expect_download() as info:
        link.click()
    download = info.value
    return Path(download.path()).read_bytes(), download.suggested_filename


def test_export_and_download_files_that_open(fresh: Any, output_dir: Path) -> None:
    email = f"{unique('export')}@example.com"
    ids = waiting_requests(5, email=email)
    page = fresh().new_page()
    page.goto(f"/console/requests?email={email}")
    sign_in(page, staff_user())
    page.get_by_role("heading", name="Cancellation requests").wait_for()

    data, name = _export(page, email, "csv", 5)
    check_page(page, output_dir, "bulk-export-done")
    assert name.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert sorted(int(r["id"]) for r in rows) == ids
    assert {r["status"] for r in rows} == {"waiting"}

    data, name = _export(page, email, "xlsx", 5)
    assert name.endswith(".xlsx")
    from openpyxl import load_workbook

    sheet = load_workbook(io.BytesIO(data), read_only=True).active
    assert sheet is not None
    table = list(sheet.iter_rows(values_only=True))
    assert table[0][0] == "id"
    assert sorted(int(str(r[0])) for r in table[1:]) == ids

    data, _ = _export(page, email, "json", 5)
    assert sorted(r["id"] for r in json.loads(data)) == ids


def test_a_bulk_decision_job_survives_its_worker_being_killed(stack: Stack) -> None:
    """The worker process running the job is SIGKILLed mid-job: the message goes back to the queue, a new
    process resumes after the last committed chunk, and every request is rejected exactly once."""
    ids = waiting_requests(1000)
    from cancelflow.worker.app import install_sender

    install_sender()
    with transaction() as session:
        job_id = bulk_decisions.create_job(
            session, "reject", actor="staff (user:77)", message="bulk restart check", ids=ids
        ).id
        after_commit.enqueue_after_commit(session, bulk_decisions.TASK, str(job_id))

    def progress() -> tuple[JobStatus, int]:
        with transaction() as session:
            job = session.get_one(BulkJob, job_id)
            return job.status, job.done

    wait_for(
        lambda: progress()[1] >= 2 * bulk_decisions.CHUNK_SIZE, timeout=120, interval=0.05, what="2 chunks"
    )
    killed = 0
    for child in stack.procs["worker"].children():
        child.send_signal(signal.SIGKILL)
        killed += 1
    status, done_at_kill = progress()
    assert killed >= 1
    assert status == JobStatus.running
    assert done_at_kill < len(ids), "the job finished before the kill: nothing was resumed"

    wait_for(lambda: progress()[0] == JobStatus.done, timeout=600, what="the job done after the kill")
    with transaction() as session:
        job = session.get_one(BulkJob, job_id)
        assert (job.done, job.total, job.skipped) == (len(ids), len(ids), 0)
        counted = session.execute(
            text(
                "SELECT entity_id, count(*) FROM events WHERE entity = 'request' AND to_status = 'rejected' "
                "AND entity_id = ANY(:ids) GROUP BY entity_id"
            ),
            {"ids": ids},
        )
        per_request = {row[0]: row[1] for row in counted}
    assert per_request == dict.fromkeys(ids, 1)
    assert set(_statuses(ids).values()) == {RequestStatus.rejected}
    assert stack.procs["worker"].alive()
