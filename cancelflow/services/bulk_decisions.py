"""Bulk decisions: one staff decision (approve, or reject with a reason) over many requests, as a job.

The job is a `BulkJob` of kind `requests.bulk_approve` / `requests.bulk_reject`, selecting its requests as
a bulk tag job does (`bulk.selection_of`: explicit ids, or list filters applied when the job runs) and run
by the `decisions.bulk` task in chunks of `CHUNK_SIZE` requests in id order. Each request is decided by the
very service of the single action (`cancellation_requests.update_request` to approve, as
`PATCH /api/v1/cancellation_requests/{id}/`, and `cancellation_requests.reject`, as `…/reject/`), with the
job's actor, inside a savepoint: a request the service refuses (not waiting any more, say) is left as it is
and counted in `skipped`, with the first `SKIPS_KEPT` reasons kept on the job. A chunk's decisions commit
together with its progress (`done`, `skipped`, `last_id`), so a crash loses at most the chunk in flight and
the next run continues after the committed `last_id`; two runners serialise on the job row's lock.

Limits are those of a bulk tag job: `bulk_max_ids` explicit ids, `bulk_max_rows` requests selected by a
filter, `bulk_jobs_per_token` active jobs per token or console user, all checked before anything is stored.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Sequence
from typing import Any, Final, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cancelflow.errors import AlreadyHandled, Conflict, Invalid, InvalidTransition, NotFound
from cancelflow.models import BulkJob, CancellationRequest, JobStatus
from cancelflow.models.batch_jobs import JOB_MACHINE
from cancelflow.models.enums import RequestStatus
from cancelflow.services import batch_jobs, bulk, limits, tags, task_ids
from cancelflow.services import cancellation_requests as requests_service

Decision = Literal["approve", "reject"]
KINDS: Final[dict[Decision, str]] = {
    "approve": task_ids.DECISION_KINDS[0],
    "reject": task_ids.DECISION_KINDS[1],
}
TASK: Final = task_ids.DECISION_TASK
# Each decision locks its order and writes a few rows: a chunk holds its order locks until it commits.
CHUNK_SIZE: Final = 100
SKIPS_KEPT: Final = 50
MAX_MESSAGE: Final = 2000
_TARGET: Final[dict[Decision, RequestStatus]] = {
    "approve": RequestStatus.approved,
    "reject": RequestStatus.rejected,
}
# What a service raises for a request it will not decide: the request is skipped, the job goes on.
REFUSALS: Final = (InvalidTransition, Invalid, NotFound, Conflict, AlreadyHandled)


def is_decision(job: BulkJob) -> bool:
    return job.kind in KINDS.values()


def create_job(
    session: Session,
    decision: Decision,
    *,
    actor: str,
    message: str | None = None,
    ids: Sequence[int] | None = None,
    filters: dict[str, Any] | None = None,
    tag: str | None = None,
    user_id: int | None = None,
    token_id: int | None = None,
) -> BulkJob:
    """A pending decision job over explicit ids or a filter (and the list's tag filter), or Invalid /
    TooManyJobs with nothing stored. A rejection needs its `message`, which every request then carries."""
    if decision not in KINDS:
        raise Invalid("decision", field_errors={"action": ["Choose approve or reject."]})
    params: dict[str, Any] = {"op": decision, "actor": actor, "channel_id": None}
    if decision == "reject":
        message = (message or "").strip()
        if not message:
            raise Invalid("reason", field_errors={"reason": ["Say why the requests are rejected."]})
        params["message"] = message[:MAX_MESSAGE]
    if token_id is not None:
        params["token_id"] = token_id
    if user_id is not None:
        params["user_id"] = user_id
    limits.set_statement_timeout(session)
    if ids is not None:
        bulk.check_ids(ids, field="ids")
        params["ids"] = sorted(set(ids))
        total = len(params["ids"])
    else:
        params["filters"] = dict(filters or {})
        if tag:
            params["tag"] = tags.check_key_limits([tag], field="tag")[0]
        total = bulk.count_selection(session, params)
    limits.claim_job_slot(session, BulkJob, token_id, user_id=user_id)
    job = BulkJob(id=uuid.uuid4(), kind=KINDS[decision], status=JobStatus.pending, total=total, params=params)
    return batch_jobs.add(session, job)


def _decide(session: Session, request_id: int, params: dict[str, Any]) -> None:
    """One request, through the service of the single action."""
    actor = str(params["actor"])
    if params.get("op") == "approve":
        requests_service.update_request(
            session, request_id, {"status": RequestStatus.approved.value}, actor=actor, channel_id=None
        )
    else:
        requests_service.reject(
            session, request_id, actor=actor, channel_id=None, message=str(params.get("message") or "")
        )


def run_chunk(
    session: Session, job_id: uuid.UUID, *, chunk_size: int = CHUNK_SIZE, params: dict[str, Any] | None = None
) -> bool:
    """Decide the next chunk of the job's requests and record it; True while more may remain. Flushes,
    never commits."""
    row = session.execute(
        select(BulkJob.status, BulkJob.last_id, BulkJob.skipped, BulkJob.skips)
        .where(BulkJob.id == job_id)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFound(f"bulk job {job_id} not found")
    status, last_id, skipped_before, skips = row
    if not JOB_MACHINE.allows(status, JobStatus.running):
        return False
    if params is None:
        stored: dict[str, Any] = session.scalar(select(BulkJob.params).where(BulkJob.id == job_id)) or {}
        params = stored
    decision: Decision = "approve" if params.get("op") == "approve" else "reject"
    target = _TARGET[decision]
    if "ids" in params:
        ids: list[int] = params["ids"]
        start = bisect.bisect_right(ids, last_id)
        candidates = ids[start : start + chunk_size]
        source = tags.requests_by_ids(candidates)
        new_last: int | None = candidates[-1] if candidates else None
        finished = start + chunk_size >= len(ids)
    else:
        source = bulk.selection_of(params).where(CancellationRequest.id > last_id)
        new_last = None
        finished = False
    limits.set_statement_timeout(session)
    chosen = list(
        session.execute(
            select(CancellationRequest.id, CancellationRequest.status)
            .where(CancellationRequest.id.in_(source.order_by(CancellationRequest.id).limit(chunk_size)))
            .order_by(CancellationRequest.id)
        )
    )
    kept: list[dict[str, object]] = list(skips or [])
    skipped = 0
    for request_id, current in chosen:
        reason: str | None = None
        if current == target:
            reason = f"already {target.value}"
        else:
            try:
                with session.begin_nested():
                    _decide(session, request_id, params)
            except REFUSALS as exc:
                reason = _reason(exc)
        if reason is not None:
            skipped += 1
            if len(kept) < SKIPS_KEPT:
                kept.append({"id": request_id, "reason": reason[:300]})
    if new_last is None:
        new_last = chosen[-1][0] if chosen else None
        finished = len(chosen) < chunk_size
    values: dict[str, Any] = {"done": BulkJob.done + len(chosen), "skipped": skipped_before + skipped}
    if skipped:
        values["skips"] = kept
    if new_last is not None:
        values["last_id"] = new_last
    if finished:
        values["finished_at"] = func.now()
        if "ids" in params:
            values["total"] = BulkJob.done + len(chosen)  # the ids that named requests
    batch_jobs.move(session, BulkJob, JobStatus.done if finished else JobStatus.running, job_id, **values)
    return not finished


def _reason(exc: Exception) -> str:
    if isinstance(exc, Invalid) and exc.field_errors:
        return " ".join(m for ms in exc.field_errors.values() for m in ms)
    return str(getattr(exc, "message", exc))


# The loop every chunked job shares: a chunk's decisions send their follow-up work when it commits.
drive = batch_jobs.ChunkedJobs("decision", frozenset(KINDS.values()), run_chunk, CHUNK_SIZE).drive


def mark_failed(session: Session, job_id: uuid.UUID, error: str) -> None:
    bulk.mark_failed(session, job_id, error)


__all__ = [
    "CHUNK_SIZE",
    "KINDS",
    "REFUSALS",
    "SKIPS_KEPT",
    "TASK",
    "Decision",
    "create_job",
    "drive",
    "is_decision",
    "mark_failed",
    "run_chunk",
]
