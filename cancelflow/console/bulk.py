"""Bulk actions from the requests list, the jobs that carry them out, and the export downloads.

The list's bulk bar (`templates/bulk_bar.html`) posts what to do and to which requests to
`/console/bulk/confirm`: the rows ticked (or every row of the page), or every request matching the list's
filters, which travel as `filter:<name>` fields and are applied by the job when it runs, not read from the
page. The confirmation page states the action and the exact count and carries the same fields, with the
session's CSRF token, to `POST /console/bulk/start`, which checks the count again (a selection that changed
in between is confirmed anew) and stores the job through the API's services: `bulk.create_job` for tags
(`tags.bulk`), `bulk_decisions.create_job` for approvals and rejections (`decisions.bulk`, each request
decided by the single action's service with the staff user as actor) and `exports.create_job` for files
(`exports.run`). The limits are the API's: `bulk_max_ids` ids, `bulk_max_rows` requests for a
filter-selected tag or decision job, and the jobs a user may have queued or running. Every action is a job,
whatever its size, so it has one page to follow and to come back to (`/console/jobs`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cancelflow import textcheck
from cancelflow.api.deps import DbSession
from cancelflow.console import web
from cancelflow.console.web import Staff, StaffPost, render
from cancelflow.errors import Conflict, Gone, Invalid, NotFound, TooManyJobs
from cancelflow.models import BulkJob, ExportFormat, ExportJob, JobStatus
from cancelflow.services import after_commit, batch_jobs, bulk, bulk_decisions, exports, tags, task_ids
from cancelflow.services.console_sessions import SignedIn
from cancelflow.services.queries import RequestFilters

router = APIRouter(prefix=web.PREFIX, include_in_schema=False)

FILTER_PREFIX: Final = "filter:"
# (action, what the confirmation's button says, the verb of a job's title)
ACTIONS: Final[dict[str, str]] = {
    "add_tag": "Add tag",
    "remove_tag": "Remove tag",
    "approve": "Approve",
    "reject": "Reject",
    "export": "Export",
}
FORMATS: Final = tuple(f.value for f in ExportFormat)
MAX_REASON: Final = bulk_decisions.MAX_MESSAGE
JOBS_SHOWN: Final = 50
POLL_SECONDS: Final = 1
# A tag job started here commits (and so reports) its progress every this many requests; the API's and
# the CLI's jobs keep `bulk.CHUNK_SIZE`.
TAG_CHUNK_SIZE: Final = 5000
FILTER_LABELS: Final[dict[str, str]] = {
    "status": "Status",
    "tag": "Tag",
    "cancellation_plan_status": "Plan status",
    "cancellation_type": "Type",
    "escalated": "Escalated",
    "order_number": "Order number",
    "order__customer__email__iexact": "Customer e-mail",
    "email": "Customer e-mail",
    "sku": "SKU",
    "channel": "Channel id",
    "reason": "Reason id",
    "created_date__date__gte": "Created from",
    "created_date__date__lte": "Created until",
    "modified_date__date__gte": "Modified from",
    "modified_date__date__lte": "Modified until",
}


@dataclass
class Instruction:
    """What the user asked for: an action, its argument, and the selection (ids, or the list's filters)."""

    action: str
    key: str = ""
    reason: str = ""
    format: str = "csv"
    ids: list[int] | None = None  # None: every request matching the filters
    filter_params: dict[str, str] = field(default_factory=dict)  # as the list's URL had them, tag included
    filters: RequestFilters = field(default_factory=RequestFilters)
    tag: str | None = None

    def hidden_fields(self) -> list[tuple[str, str]]:
        """The order as the confirmation form carries it to the start."""
        fields = [
            ("action", self.action),
            ("key", self.key),
            ("reason", self.reason),
            ("format", self.format),
        ]
        if self.ids is None:
            fields.append(("scope", "all"))
        else:
            fields.append(("scope", "selected"))
            fields.extend(("ids", str(i)) for i in self.ids)
        fields.extend((FILTER_PREFIX + name, value) for name, value in self.filter_params.items())
        return fields

    @property
    def list_url(self) -> str:
        from urllib.parse import urlencode

        query = urlencode(self.filter_params)
        return f"{web.PREFIX}/requests" + (f"?{query}" if query else "")


async def _fields(request: Request) -> list[tuple[str, str]]:
    """Every field sent (a form, or the query string of a GET), repeated names kept; a value PostgreSQL
    could not store is dropped, as `web.form_fields` does."""
    if request.method == "GET":
        items: Iterable[tuple[str, Any]] = request.query_params.multi_items()
    else:
        items = (await request.form()).multi_items()
    return [(k, v) for k, v in items if isinstance(v, str) and textcheck.problem(v) is None]


def _filter_params(fields: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The list's filter state the form carried (`filter:<name>`), without its paging."""
    params = {
        name[len(FILTER_PREFIX) :]: value
        for name, value in fields
        if name.startswith(FILTER_PREFIX) and value
    }
    for paging in ("page", "page_after", "page_before"):
        params.pop(paging, None)
    return params


def _back(fields: Sequence[tuple[str, str]]) -> str:
    return Instruction(action="", filter_params=_filter_params(fields)).list_url


def _invalid(field_name: str, message: str) -> Invalid:
    return Invalid(message, field_errors={field_name: [message]})


def _parse(fields: Sequence[tuple[str, str]], who: SignedIn) -> Instruction:
    """The order the fields describe, or Invalid saying what is wrong."""
    single = dict(fields)
    action = single.get("action", "")
    if action not in ACTIONS:
        raise _invalid("action", "Choose an action: add or remove a tag, approve, reject or export.")
    order = Instruction(
        action=action, key=single.get("key", "").strip(), reason=single.get("reason", "").strip()
    )
    order.filter_params = _filter_params(fields)
    order.tag = order.filter_params.get("tag", "").strip() or None
    order.filters = RequestFilters.parse(order.filter_params)
    if order.tag is not None:
        tags.check_key_limits([order.tag], field="tag")
    if order.filters.iban is not None and not who.can_view_iban:
        raise _invalid("iban", "Filtering by IBAN needs the view_iban permission.")
    scope = single.get("scope", "selected")
    if scope == "all":
        order.ids = None
    else:
        names = "page_ids" if scope == "page" else "ids"
        try:
            order.ids = sorted({int(value) for name, value in fields if name == names})
        except ValueError:
            raise _invalid("ids", "A selected request id is not a number.") from None
        if not order.ids:
            raise _invalid("ids", "Tick at least one request, or choose all on the page or all matching.")
        try:
            bulk.check_ids(order.ids, field="ids")
        except Invalid:
            limit = len(order.ids)
            raise _invalid(
                "ids",
                f"{limit} requests were picked one by one; at most {_max_ids()} may be "
                "(CANCELFLOW_BULK_MAX_IDS). Choose all matching this filter instead.",
            ) from None
    if action in ("add_tag", "remove_tag"):
        if not order.key:
            raise _invalid("key", "Enter the tag to add or remove.")
        order.key = tags.check_key_limits([order.key], field="key")[0]
    if action == "reject":
        if not order.reason:
            raise _invalid("reason", "Say why the requests are rejected.")
        order.reason = order.reason[:MAX_REASON]
    if action == "export":
        order.format = single.get("format", "csv").strip().lower()
        if order.format not in FORMATS:
            raise _invalid("format", "Choose CSV, XLSX or JSON.")
    return order


def _max_ids() -> int:
    from cancelflow.config import get_settings

    return get_settings().bulk_max_ids


def _count(session: Session, order: Instruction) -> int:
    """How many requests the order acts on now: the existing ones among the ids, or the filter's exact
    count (with the `bulk_max_rows` limit of a tag or decision job)."""
    if order.ids is not None:
        chosen = tags.requests_by_ids(order.ids).subquery()
        return int(session.scalar(select(func.count()).select_from(chosen)) or 0)
    if order.action == "export":
        return exports.count_rows(session, order.filters, tag=order.tag)
    return bulk.count_selection(session, {"filters": order.filters.as_params(), "tag": order.tag})


def _headline(order: Instruction, count: int) -> str:
    noun = "request" if count == 1 else "requests"
    if order.action == "add_tag":
        return f"Add tag “{order.key}” to {count} {noun}"
    if order.action == "remove_tag":
        return f"Remove tag “{order.key}” from {count} {noun}"
    if order.action == "export":
        return f"Export {count} {noun} as {order.format.upper()}"
    return f"{ACTIONS[order.action]} {count} {noun}"


def _described_filters(order: Instruction) -> list[tuple[str, str]]:
    return [(FILTER_LABELS.get(name, name), value) for name, value in order.filter_params.items()]


def _confirm_page(
    request: Request,
    who: SignedIn,
    order: Instruction,
    count: int,
    *,
    notice: str | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    context = {
        "title": "Confirm a bulk action",
        "who": who,
        "order": order,
        "count": count,
        "headline": _headline(order, count),
        "filters": _described_filters(order),
        "fields": order.hidden_fields(),
        "notice": notice,
        "error": error,
    }
    return render(request, "bulk_confirm.html", context, status_code=status_code)


def _refused(request: Request, who: SignedIn, message: str, *, status_code: int, back: str) -> Response:
    context = {"title": "Bulk action refused", "who": who, "message": message, "back": back}
    return render(request, "bulk_refused.html", context, status_code=status_code)


def _message(exc: Invalid) -> str:
    return " ".join(m for ms in exc.field_errors.values() for m in ms) or exc.message


async def _counted(
    request: Request, who: SignedIn, session: Session
) -> tuple[list[tuple[str, str]], Instruction, int] | Response:
    """The form's fields, the order they give and how many requests it acts on now; or the refusal page,
    the same for the confirmation and the start."""
    fields = await _fields(request)
    try:
        order = _parse(fields, who)
        return fields, order, _count(session, order)
    except Invalid as exc:
        return _refused(request, who, _message(exc), status_code=400, back=_back(fields))


@router.api_route("/bulk/confirm", methods=["GET", "POST"], response_class=HTMLResponse)
async def confirm(request: Request, who: Staff, session: DbSession) -> Response:
    """The confirmation: the action and the exact count, before anything moves. Reads only."""
    counted = await _counted(request, who, session)
    if isinstance(counted, Response):
        return counted
    _, order, count = counted
    return _confirm_page(request, who, order, count)


@router.post("/bulk/start", response_class=HTMLResponse)
async def start(request: Request, who: StaffPost, session: DbSession) -> Response:
    """Store the confirmed job (its message leaves when the transaction commits) and show its page."""
    counted = await _counted(request, who, session)
    if isinstance(counted, Response):
        return counted
    fields, order, count = counted
    confirmed = dict(fields).get("count", "")
    if confirmed != str(count):
        notice = f"The selection changed since it was confirmed: it now holds {count} requests."
        return _confirm_page(request, who, order, count, notice=notice, status_code=409)
    if count == 0:
        return _confirm_page(request, who, order, count, error="No request is selected.", status_code=400)
    try:
        with session.begin_nested():
            job_id, task = _store(session, order, who, count)
    except Invalid as exc:
        return _confirm_page(request, who, order, count, error=_message(exc), status_code=400)
    except TooManyJobs as exc:
        return _confirm_page(request, who, order, count, error=exc.message, status_code=429)
    after_commit.enqueue_after_commit(session, task, str(job_id))
    response = RedirectResponse(f"{web.PREFIX}/jobs/{job_id}", status_code=303)
    web.no_store(response)
    return response


def _store(session: Session, order: Instruction, who: SignedIn, count: int) -> tuple[uuid.UUID, str]:
    """The job for the order, through the API's services: (its id, the task that runs it)."""
    user_id = who.user.id
    filters = order.filters.as_params() if order.ids is None else None
    if order.action in ("add_tag", "remove_tag"):
        op: bulk.Op = "add" if order.action == "add_tag" else "remove"
        job = bulk.create_job(
            session,
            op,
            [order.key],
            ids=order.ids,
            filters=filters,
            tag=order.tag,
            user_id=user_id,
            chunk_size=TAG_CHUNK_SIZE,
        )
        return job.id, task_ids.BULK_TASK
    if order.action in ("approve", "reject"):
        decided = bulk_decisions.create_job(
            session,
            "approve" if order.action == "approve" else "reject",
            actor=who.actor,
            message=order.reason or None,
            ids=order.ids,
            filters=filters,
            tag=order.tag,
            user_id=user_id,
        )
        return decided.id, bulk_decisions.TASK
    if order.ids is not None:
        selection = {"pk__in": ",".join(str(i) for i in order.ids)}
        tag = None
    else:
        selection, tag = order.filters.as_params(), order.tag
    export = exports.create_job(
        session, ExportFormat(order.format), filters=selection, total=count, user_id=user_id, tag=tag
    )
    return export.id, task_ids.EXPORT_TASK


# --- jobs ---------------------------------------------------------------------------------------------


def _title(job: BulkJob | ExportJob) -> str:
    if isinstance(job, ExportJob):
        return f"Export as {job.format.value.upper()}"
    params = job.params or {}
    raw_keys = params.get("keys")
    keys = ", ".join(f"“{k}”" for k in raw_keys) if isinstance(raw_keys, list) else ""
    if job.kind == bulk.KINDS["add"]:
        return f"Add tag {keys}"
    if job.kind == bulk.KINDS["remove"]:
        return f"Remove tag {keys}"
    if job.kind == bulk_decisions.KINDS["approve"]:
        return "Approve requests"
    return "Reject requests"


@dataclass(frozen=True)
class JobView:
    id: uuid.UUID
    title: str
    status: str
    done: int
    total: int
    percent: int
    finished: bool
    skipped: int
    skips: list[tuple[str, str]]
    reason: str | None
    error: str | None
    created: Any
    finished_at: Any
    download: str | None
    file_label: str | None
    scope: str


def _view(job: BulkJob | ExportJob, who: SignedIn) -> JobView:
    finished = job.status in (JobStatus.done, JobStatus.failed, JobStatus.expired)
    total = max(job.total, 0)
    done = job.done
    if job.status == JobStatus.done:
        total = max(total, done)
        percent = 100
    else:
        percent = min(99, done * 100 // total) if total else 0
    params = job.params or {}
    filters = params.get("filters")
    if isinstance(job, ExportJob) and isinstance(filters, dict) and "pk__in" in filters:
        scope = f"{len(str(filters['pk__in']).split(','))} selected requests"
    elif "ids" in params:
        scope = f"{len(params['ids'])} selected requests"  # type: ignore[arg-type]
    else:
        shown = {**(filters if isinstance(filters, dict) else {})}
        if params.get("tag"):
            shown["tag"] = params["tag"]
        scope = "all requests matching " + (
            ", ".join(f"{FILTER_LABELS.get(k, k)} = {web.masked(str(v), who)}" for k, v in shown.items())
            or "no filter"
        )
    is_export = isinstance(job, ExportJob)
    download = f"{web.PREFIX}/jobs/{job.id}/download" if is_export and job.status == JobStatus.done else None
    skipped = 0 if isinstance(job, ExportJob) else job.skipped
    skips = (
        []
        if isinstance(job, ExportJob)
        else [(str(s.get("id")), web.masked(str(s.get("reason", "")), who) or "") for s in job.skips or []]
    )
    reason = web.masked(str(params["message"]), who) if params.get("message") else None
    return JobView(
        id=job.id,
        title=_title(job),
        status=job.status.value,
        done=done,
        total=total,
        percent=percent,
        finished=finished,
        skipped=skipped,
        skips=skips,
        reason=reason,
        error=web.masked(job.error, who),
        created=job.created_date,
        finished_at=job.finished_at,
        download=download,
        file_label=f"Download the {job.format.value.upper()} file" if isinstance(job, ExportJob) else None,
        scope=scope,
    )


def _job_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


def _not_found(request: Request, who: SignedIn, message: str = "No such job.") -> Response:
    return render(
        request, "error.html", {"title": "Not found", "who": who, "message": message}, status_code=404
    )


@router.get("/jobs", response_class=HTMLResponse)
def jobs(request: Request, who: Staff, session: DbSession) -> Response:
    """The jobs the signed-in user started, newest first."""
    views = [_view(job, who) for job in batch_jobs.started_by(session, who.user.id, limit=JOBS_SHOWN)]
    running = any(not v.finished for v in views)
    context = {"title": "Jobs", "who": who, "jobs": views, "shown": JOBS_SHOWN, "poll": running}
    return render(request, "bulk_jobs.html", context)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, who: Staff, session: DbSession) -> Response:
    found = _job_id(job_id)
    job = batch_jobs.find(session, found) if found is not None else None
    if job is None:
        return _not_found(request, who)
    view = _view(job, who)
    context = {"title": view.title, "who": who, "job": view, "poll_seconds": POLL_SECONDS}
    return render(request, "bulk_job.html", context)


@router.get("/jobs/{job_id}/download")
def download(request: Request, job_id: str, who: Staff, session: DbSession) -> Response:
    """An export's file, as `GET /api/v1/exports/{id}/download/` serves it (the same checks)."""
    found = _job_id(job_id)
    job = session.get(ExportJob, found) if found is not None else None
    if job is None:
        return _not_found(request, who, "No such export.")
    try:
        ready = exports.ready_file(job)
    except (Gone, Conflict, NotFound) as exc:
        code = 410 if isinstance(exc, Gone) else 409 if isinstance(exc, Conflict) else 404
        context = {"title": "Download unavailable", "who": who, "message": exc.message}
        return render(request, "error.html", context, status_code=code)
    response = FileResponse(ready.path, media_type=ready.media_type, filename=ready.name)
    web.no_store(response)
    return response


__all__ = ["router"]
