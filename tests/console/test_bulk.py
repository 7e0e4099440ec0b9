"""The console's bulk actions without a browser or a worker: the confirmation states the count before
anything moves, the start is CSRF-protected, the API's limits refuse with a clear message and store
nothing, and a bulk decision job resumes after its last committed chunk."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from cancelflow.api.app import create_app
from cancelflow.config import get_settings
from cancelflow.db import transaction
from cancelflow.models import BulkJob, CancellationRequest, Event, ExportJob, JobStatus
from cancelflow.models.enums import RequestStatus
from cancelflow.services import bulk_decisions
from cancelflow.services.after_commit import Send
from tests.api.test_tags import make_requests, tagged_ids, unique
from tests.conftest import restored_logging
from tests.console.support import csrf_of, sign_in, staff_user, waiting_requests
from tests.factories import new_order, new_request

_FIELD = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


@pytest.fixture
def console(database: str) -> Iterator[TestClient]:
    """A client signed in as a new staff user (each test its own, so the jobs-per-user limit is its own)."""
    with restored_logging(), TestClient(create_app()) as client:
        assert sign_in(client, staff_user()).status_code == 303
        yield client


def _confirm(client: TestClient, **fields: str | list[str]) -> httpx.Response:
    return client.post("/console/bulk/confirm", data=fields, follow_redirects=False)


def _confirmed_fields(page: httpx.Response) -> list[tuple[str, str]]:
    """The hidden fields of the confirmation form, as the browser would post them to the start."""
    form = page.text.split('action="/console/bulk/start"', 1)[1].split("</form>", 1)[0]
    return [(name, value.replace("&amp;", "&")) for name, value in _FIELD.findall(form)]


def _start(client: TestClient, fields: list[tuple[str, str]]) -> httpx.Response:
    """Post the confirmation's fields (repeated names kept) to the start, as a browser would."""
    return client.post(
        "/console/bulk/start",
        content=urlencode(fields),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )


def _jobs(model: type[BulkJob] | type[ExportJob] = BulkJob) -> int:
    with transaction() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _statuses(ids: list[int]) -> set[RequestStatus]:
    with transaction() as session:
        return set(session.scalars(select(CancellationRequest.status).where(CancellationRequest.id.in_(ids))))


def test_the_list_offers_the_bulk_bar_with_named_checkboxes(console: TestClient) -> None:
    order = new_order(quantity=3)
    made = [new_request(order, quantity=1).id for _ in range(2)]
    page = console.get("/console/requests", params={"order_number": order.order.number})
    assert page.status_code == 200
    for request_id in made:
        assert f'name="ids" value="{request_id}" aria-label="Select request {request_id}"' in page.text
    assert 'aria-label="Select all on this page"' in page.text
    assert "Select all 2 matching this filter" in page.text
    assert f'name="filter:order_number" value="{order.order.number}"' in page.text
    assert 'aria-current="page">Requests<' in page.text
    assert 'href="/console/jobs"' in page.text


def test_all_matching_carries_the_filters_as_the_list_read_them(console: TestClient) -> None:
    """An alias in a shared link (`email` for the customer e-mail) narrows the list; the bulk bar carries
    it too, so "all matching" is the rows the list shows, not every request."""
    email = f"{unique('alias')}@example.com"
    make_requests(2, email=email)
    page = console.get("/console/requests", params={"email": email, "page": "1"})
    assert "Select all 2 matching this filter" in page.text
    assert f'name="filter:email" value="{email}"' in page.text
    assert 'name="filter:page"' not in page.text
    confirm = _confirm(console, action="approve", scope="all", **{"filter:email": email})
    assert "Confirm: Approve 2 requests" in confirm.text


def test_all_matching_is_confirmed_with_its_count_then_started_as_a_job(
    console: TestClient, sent: list[Send]
) -> None:
    email = f"{unique('bulk')}@example.com"
    ids = make_requests(30, email=email)
    make_requests(5, email=f"{unique('other')}@example.com")
    key = unique()
    before = _jobs()
    # The confirmation is a page: nothing is stored, nothing sent, and it says what and how many.
    page = _confirm(
        console, action="add_tag", key=key, scope="all", **{"filter:order__customer__email__iexact": email}
    )
    assert page.status_code == 200, page.text
    assert f"Confirm: Add tag “{key}” to 30 requests" in page.text
    assert (_jobs(), sent, tagged_ids(key)) == (before, [], set())
    fields = _confirmed_fields(page)
    assert ("count", "30") in fields
    assert ("scope", "all") in fields
    # Started with the CSRF token: one job, queued for the tag worker after commit.
    started = _start(console, fields)
    assert started.status_code == 303, started.text
    job_id = started.headers["location"].rsplit("/", 1)[1]
    assert sent == [Send("tags.bulk", (job_id,))]
    with transaction() as session:
        job = session.get_one(BulkJob, uuid.UUID(job_id))
        assert (job.kind, job.status, job.total) == ("tags.bulk_add", JobStatus.pending, 30)
        assert job.params["filters"] == {"order__customer__email__iexact": email}
        assert isinstance(job.params["user_id"], int)
    # The job page shows its progress bar and polls while the job waits for a worker.
    shown = console.get(started.headers["location"])
    assert shown.status_code == 200
    assert '<label for="job-progress">Progress</label>' in shown.text
    assert 'hx-trigger="every 1s"' in shown.text
    listed = console.get("/console/jobs")
    assert f'href="/console/jobs/{job_id}"' in listed.text
    assert ids  # the requests exist; the worker's part is the browser test's


def test_a_selection_that_changed_is_confirmed_again(console: TestClient, sent: list[Send]) -> None:
    email = f"{unique('moving')}@example.com"
    make_requests(3, email=email)
    page = _confirm(console, action="approve", scope="all", **{"filter:email": email})
    assert "Confirm: Approve 3 requests" in page.text
    make_requests(1, email=email)  # one more arrives before the user confirms
    again = _start(console, _confirmed_fields(page))
    assert again.status_code == 409
    assert "it now holds 4 requests" in again.text
    assert "Confirm: Approve 4 requests" in again.text
    assert sent == []


def test_the_start_without_the_csrf_token_is_refused(console: TestClient, sent: list[Send]) -> None:
    ids = make_requests(3)
    page = _confirm(console, action="approve", scope="selected", ids=[str(i) for i in ids])
    assert "Confirm: Approve 3 requests" in page.text
    fields = [(k, v) for k, v in _confirmed_fields(page) if k != "csrf_token"]
    before = _jobs()
    refused = _start(console, fields)
    assert refused.status_code == 403
    forged = _start(console, [*fields, ("csrf_token", "not-the-token")])
    assert forged.status_code == 403
    assert (_jobs(), sent, _statuses(ids)) == (before, [], {RequestStatus.waiting})


def test_more_rows_than_bulk_max_rows_is_a_clear_refusal_and_nothing_moves(
    console: TestClient, sent: list[Send], monkeypatch: pytest.MonkeyPatch
) -> None:
    email = f"{unique('many')}@example.com"
    ids = make_requests(12, email=email)
    key = unique()
    monkeypatch.setenv("CANCELFLOW_BULK_MAX_ROWS", "10")
    get_settings.cache_clear()
    try:
        before = _jobs()
        page = _confirm(console, action="add_tag", key=key, scope="all", **{"filter:email": email})
        assert page.status_code == 400
        assert 'role="alert"' in page.text
        assert "the filters select 12 requests; a bulk job may act on at most 10" in page.text
        assert "Nothing was changed." in page.text
        # Posting the start directly is refused the same way.
        token = csrf_of(console.get("/console/requests"))
        start = console.post(
            "/console/bulk/start",
            data={
                "csrf_token": token,
                "action": "approve",
                "scope": "all",
                "count": "12",
                "filter:email": email,
            },
            follow_redirects=False,
        )
        assert start.status_code == 400
        assert "at most 10" in start.text
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert (_jobs(), sent, tagged_ids(key), _statuses(ids)) == (before, [], set(), {RequestStatus.waiting})


def test_more_ids_than_bulk_max_ids_is_refused(console: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = make_requests(4)
    monkeypatch.setenv("CANCELFLOW_BULK_MAX_IDS", "3")
    get_settings.cache_clear()
    try:
        page = _confirm(console, action="approve", scope="selected", ids=[str(i) for i in ids])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert page.status_code == 400
    assert "at most 3 may be (CANCELFLOW_BULK_MAX_IDS)" in page.text


def test_the_jobs_per_user_limit_is_a_clear_refusal(console: TestClient, sent: list[Send]) -> None:
    ids = make_requests(3)
    limit = get_settings().bulk_jobs_per_token
    for n in range(limit):
        page = _confirm(console, action="add_tag", key=f"k{n}", scope="selected", ids=[str(i) for i in ids])
        assert _start(console, _confirmed_fields(page)).status_code == 303
    before = _jobs()
    page = _confirm(console, action="reject", reason="duplicate", scope="selected", ids=[str(i) for i in ids])
    refused = _start(console, _confirmed_fields(page))
    assert refused.status_code == 429
    assert f"You already have {limit} bulk jobs queued or running (at most {limit})" in refused.text
    assert _jobs() == before
    assert len(sent) == limit
    assert _statuses(ids) == {RequestStatus.waiting}


def test_a_reject_without_a_reason_is_refused(console: TestClient) -> None:
    ids = make_requests(2)
    page = _confirm(console, action="reject", reason=" ", scope="selected", ids=[str(i) for i in ids])
    assert page.status_code == 400
    assert "Say why the requests are rejected." in page.text


def test_a_decision_job_resumes_after_its_last_committed_chunk(sent: list[Send]) -> None:
    """A run that stops after two chunks (a crash) leaves them committed; the next run decides the rest,
    and no request is decided twice."""
    ids = waiting_requests(25)
    with transaction() as session:
        job_id = bulk_decisions.create_job(
            session, "reject", actor="staff (user:41)", message="duplicate order", ids=ids
        ).id
    assert bulk_decisions.drive(job_id, transaction, chunk_size=10, stop_after=2) == 2
    with transaction() as session:
        job = session.get_one(BulkJob, job_id)
        assert (job.status, job.done, job.last_id) == (JobStatus.running, 20, ids[19])
    assert _statuses(ids[:20]) == {RequestStatus.rejected}
    assert _statuses(ids[20:]) == {RequestStatus.waiting}
    assert bulk_decisions.drive(job_id, transaction, chunk_size=10) == 1
    with transaction() as session:
        job = session.get_one(BulkJob, job_id)
        assert (job.status, job.done, job.total, job.skipped) == (JobStatus.done, 25, 25, 0)
        rejected = session.execute(
            text(
                "SELECT entity_id, count(*) FROM events WHERE entity = 'request' AND to_status = 'rejected' "
                "AND entity_id = ANY(:ids) GROUP BY entity_id"
            ),
            {"ids": ids},
        ).all()
        assert sorted(rejected) == [(i, 1) for i in ids]
        actors = set(
            session.scalars(
                select(Event.data["actor"].astext).where(
                    Event.entity == "request", Event.entity_id.in_(ids), Event.to_status == "rejected"
                )
            )
        )
        assert actors == {"staff (user:41)"}
    assert _statuses(ids) == {RequestStatus.rejected}
    # Run again: a finished job decides nothing more.
    assert bulk_decisions.drive(job_id, transaction, chunk_size=10) == 1


def test_a_request_the_service_refuses_is_skipped_with_its_reason(sent: list[Send]) -> None:
    waiting = waiting_requests(2)
    done = make_requests(1, status="completed")
    with transaction() as session:
        job_id = bulk_decisions.create_job(
            session, "approve", actor="staff (user:42)", ids=[*waiting, *done]
        ).id
    bulk_decisions.drive(job_id, transaction)
    with transaction() as session:
        job = session.get_one(BulkJob, job_id)
        assert (job.status, job.done, job.skipped) == (JobStatus.done, 3, 1)
        assert job.skips[0]["id"] == done[0]
        assert "completed" in str(job.skips[0]["reason"])
    assert _statuses(waiting) == {RequestStatus.approved}
    assert _statuses(done) == {RequestStatus.completed}
    assert len(sent) == 2  # each approval's first step, sent when its chunk committed


def test_each_bulk_task_refuses_the_other_kind_of_bulk_job(sent: list[Send]) -> None:
    """`tags.bulk` and `decisions.bulk` both run `bulk_jobs` rows: each refuses the other's, untouched."""
    from cancelflow.services import bulk
    from cancelflow.worker.app import celery_app

    celery_app.loader.import_default_modules()
    ids = waiting_requests(2)
    with transaction() as session:
        decision = bulk_decisions.create_job(session, "approve", actor="staff (user:43)", ids=ids).id
        tagging = bulk.create_job(session, "remove", ["vip"], ids=ids).id
    assert celery_app.tasks["tags.bulk"](str(decision)) == "refused"
    assert celery_app.tasks["decisions.bulk"](str(tagging)) == "refused"
    with transaction() as session:
        for job_id in (decision, tagging):
            job = session.get_one(BulkJob, job_id)
            assert (job.status, job.done) == (JobStatus.pending, 0)
    assert _statuses(ids) == {RequestStatus.waiting}
    # Its own task runs it.
    assert celery_app.tasks["decisions.bulk"](str(decision)) == "done"
    assert _statuses(ids) == {RequestStatus.approved}


def test_each_bulk_runner_refuses_the_other_kind_of_bulk_job(sent: list[Send]) -> None:
    """The chunk loop checks the job's kind before its first chunk: the other kind's job is left untouched."""
    from cancelflow.errors import Invalid
    from cancelflow.services import bulk

    ids = waiting_requests(2)
    with transaction() as session:
        decision = bulk_decisions.create_job(session, "approve", actor="staff (user:44)", ids=ids).id
        tagging = bulk.create_job(session, "remove", ["vip"], ids=ids).id
    with pytest.raises(Invalid, match="not a tag job") as refused:
        bulk.drive(decision, transaction)
    assert refused.value.code == "wrong_kind"
    with pytest.raises(Invalid, match="not a decision job"):
        bulk_decisions.drive(tagging, transaction)
    with transaction() as session:
        for job_id in (decision, tagging):
            job = session.get_one(BulkJob, job_id)
            assert (job.status, job.done) == (JobStatus.pending, 0)
    assert _statuses(ids) == {RequestStatus.waiting}


def test_an_export_is_confirmed_by_get_too_and_downloads_only_when_done(
    console: TestClient, sent: list[Send]
) -> None:
    email = f"{unique('file')}@example.com"
    waiting_requests(2, email=email)
    page = console.get(
        "/console/bulk/confirm",
        params={"action": "export", "format": "xlsx", "scope": "all", "filter:email": email},
    )
    assert page.status_code == 200
    assert "Confirm: Export 2 requests as XLSX" in page.text
    started = _start(console, _confirmed_fields(page))
    assert started.status_code == 303
    job_id = started.headers["location"].rsplit("/", 1)[1]
    assert sent == [Send("exports.run", (job_id,))]
    shown = console.get(started.headers["location"])
    # Without JavaScript the running job's page reloads itself; the file is offered only once written.
    assert '<noscript><meta http-equiv="refresh" content="3"></noscript>' in shown.text
    assert "Download the XLSX file" not in shown.text
    early = console.get(f"/console/jobs/{job_id}/download")
    assert early.status_code == 409
    assert "is pending, not done" in early.text
    assert console.get(f"/console/jobs/{uuid.uuid4()}/download").status_code == 404
    assert console.get("/console/jobs/not-a-job").status_code == 404
    with transaction() as session:
        job = session.get_one(ExportJob, uuid.UUID(job_id))
        assert job.params["filters"] == {"order__customer__email__iexact": email}
