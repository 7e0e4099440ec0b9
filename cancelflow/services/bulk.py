"""Bulk tagging: many requests, many keys, in set-based statements.

Up to `SYNC_MAX_IDS` ids are tagged in the caller's transaction. Beyond that (or for a filter-selected
set, from the CLI) the work is a `BulkJob` row, run by the `tags.bulk` task in chunks: each chunk is one
`INSERT … SELECT … ON CONFLICT DO NOTHING` (or `DELETE … WHERE`) over the next `chunk_size` request ids
above `last_id`, committed together with the progress update. A crash loses at most the chunk in flight;
the next run (the redelivered message, or `cancelflow tags resume`) continues from the committed `last_id`.
Two runners of one job serialise on the job row's lock, so no chunk is ever done twice or skipped.

Limits (settings, README "Limits"): at most `bulk_max_ids` ids in one call, at most `bulk_max_rows`
requests matched by a filter-selected job, the tag limits of `services.tags`, at most
`bulk_jobs_per_token` active jobs per API token (`services.limits`), and every chunk statement under the
`job_statement_timeout`. Everything is checked before the job or any tag is written.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from cancelflow.config import get_settings
from cancelflow.errors import Invalid, NotFound
from cancelflow.models import BulkJob, CancellationRequest, JobStatus
from cancelflow.models.batch_jobs import JOB_MACHINE
from cancelflow.services import batch_jobs, limits, tags

SYNC_MAX_IDS = 1000
CHUNK_SIZE = 25_000
Op = Literal["add", "remove"]
KINDS: dict[Op, str] = {"add": "tags.bulk_add", "remove": "tags.bulk_remove"}


def check_ids(ids: Sequence[int], *, field: str = "objects") -> None:
    """Invalid (400) for more than `bulk_max_ids` ids in one call (counted as sent)."""
    limit = get_settings().bulk_max_ids
    if len(ids) > limit:
        raise Invalid(
            "too many ids",
            field_errors={field: [f"Ensure this field has no more than {limit} elements."]},
            code="max_length",
        )


def apply(session: Session, op: Op, selection: Select[int], keys: Sequence[str]) -> int:
    """Add or remove keys on every request `selection` yields, in one statement."""
    if op == "add":
        return tags.add_to_selection(session, selection, keys)
    return tags.remove_from_selection(session, selection, keys)


def apply_to_ids(
    session: Session, op: Op, ids: Sequence[int], keys: Sequence[str], *, channel_id: int | None = None
) -> int:
    """The synchronous path (a few ids): unknown ids and ids of other channels are ignored."""
    check_ids(ids)
    keys = tags.check_key_limits(keys)
    return apply(session, op, tags.requests_by_ids(ids, channel_id=channel_id), keys)


def selection_of(params: dict[str, Any]) -> Select[int]:
    """The request ids a job acts on, from its stored params (explicit ids, or list filters and a tag)."""
    channel_id = params.get("channel_id")
    if "ids" in params:
        return tags.requests_by_ids([int(i) for i in params["ids"]], channel_id=channel_id)
    from cancelflow.services.queries import RequestFilters, filter_requests

    filters = RequestFilters.parse(params.get("filters") or {})
    stmt = filter_requests(select(CancellationRequest.id), filters)
    if channel_id is not None:
        stmt = stmt.where(CancellationRequest.channel_id == channel_id)
    tag = params.get("tag")
    if tag:  # the list's tag filter (`filter_by_tags/` with one key)
        stmt = stmt.where(tags.has_any_tag(tags.check_key_limits([str(tag)], field="tag")))
    return stmt


def count_selection(session: Session, params: dict[str, Any]) -> int:
    """How many requests a filter-selected job's `params` select now (validating the filters), or Invalid
    `too_many_rows` above `bulk_max_rows`."""
    selection = selection_of(params)
    total = int(session.scalar(select(func.count()).select_from(selection.subquery())) or 0)
    limit = get_settings().bulk_max_rows
    if total > limit:
        raise Invalid(
            f"the filters select {total} requests; a bulk job may act on at most {limit} "
            "(CANCELFLOW_BULK_MAX_ROWS): narrow the filters",
            code="too_many_rows",
        )
    return total


def create_job(
    session: Session,
    op: Op,
    keys: Sequence[str],
    *,
    ids: Sequence[int] | None = None,
    filters: dict[str, Any] | None = None,
    tag: str | None = None,
    channel_id: int | None = None,
    token_id: int | None = None,
    user_id: int | None = None,
    chunk_size: int | None = None,
) -> BulkJob:
    """A pending job over explicit ids or a filter, or Invalid / TooManyJobs with nothing stored.

    `total` is the size of a filter's selection now; for explicit ids it is how many were given (reading
    100,000 ids twice would cost a third of the job) and becomes the number of existing requests when the
    job finishes, since unknown ids drop out. `token_id`: the API token that asks, counted against its
    `bulk_jobs_per_token` (None from the CLI); `user_id`: the console user who asks, counted the same way.
    `chunk_size`: requests per committed chunk when the task runs it (default `CHUNK_SIZE`), so a job whose
    progress someone watches can report it more often.
    """
    params: dict[str, Any] = {"op": op, "keys": tags.check_key_limits(keys), "channel_id": channel_id}
    if token_id is not None:
        params["token_id"] = token_id
    if user_id is not None:
        params["user_id"] = user_id
    if chunk_size is not None:
        params["chunk_size"] = max(1, chunk_size)
    limits.set_statement_timeout(session)  # the selection's count and the tag-cap check below
    if ids is not None:
        if token_id is not None or user_id is not None:  # operators (the CLI) may name more
            check_ids(ids)
        params["ids"] = sorted(set(ids))
        total = len(params["ids"])
    else:
        params["filters"] = dict(filters or {})
        if tag:
            params["tag"] = tag
        total = count_selection(session, params)
    if op == "add":
        tags.check_tag_cap(session, selection_of(params), params["keys"])
    limits.claim_job_slot(session, BulkJob, token_id, user_id=user_id)
    if op == "add":
        tags.ensure_tags(session, params["keys"])
    job = BulkJob(id=uuid.uuid4(), kind=KINDS[op], status=JobStatus.pending, total=total, params=params)
    return batch_jobs.add(session, job)


def get_job(session: Session, job_id: uuid.UUID) -> BulkJob:
    return batch_jobs.get(session, BulkJob, job_id, what="bulk job")


def run_chunk(
    session: Session,
    job_id: uuid.UUID,
    *,
    chunk_size: int = CHUNK_SIZE,
    params: dict[str, Any] | None = None,
) -> bool:
    """Do the next chunk of the job and record it; True while more may remain. Flushes, never commits.

    `params` may be passed by a caller that runs many chunks, to read the (possibly long) id list once.
    """
    row = session.execute(
        select(BulkJob.status, BulkJob.last_id).where(BulkJob.id == job_id).with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFound(f"bulk job {job_id} not found")
    status, last_id = row
    if not JOB_MACHINE.allows(status, JobStatus.running):
        return False
    limits.set_statement_timeout(session)
    if params is None:
        stored: dict[str, Any] = session.scalar(select(BulkJob.params).where(BulkJob.id == job_id)) or {}
        params = stored
    op: Op = "add" if params.get("op") == "add" else "remove"
    keys = [str(k) for k in params.get("keys", [])]
    if "ids" in params:
        # Explicit ids are stored sorted: the chunk is the next slice of candidates, so each statement
        # binds only chunk_size ids (an ANY over the whole list would be re-scanned by every chunk).
        ids: list[int] = params["ids"]
        start = bisect.bisect_right(ids, last_id)
        candidates = ids[start : start + chunk_size]
        chunk_source = tags.requests_by_ids(candidates, channel_id=params.get("channel_id"))
        new_last = candidates[-1] if candidates else None
        finished = start + chunk_size >= len(ids)
    else:
        chunk_source = selection_of(params).where(CancellationRequest.id > last_id)
        new_last = None
        finished = False
    if op == "add":
        # Checked at creation; checked again per chunk for keys added to these requests since.
        tags.check_tag_cap(session, chunk_source.order_by(CancellationRequest.id).limit(chunk_size), keys)
    chunk = chunk_source.order_by(CancellationRequest.id).limit(chunk_size).cte("chunk")
    # The write and the chunk's bounds come from one statement, so from one snapshot.
    bounds = session.execute(
        select(func.max(chunk.c.id), func.count())
        .select_from(chunk)
        .add_cte(_write_cte(op, select(chunk.c.id), keys))
    ).one()
    count = int(bounds[1])
    if new_last is None:
        new_last = bounds[0]
        finished = count < chunk_size
    values: dict[str, Any] = {"done": BulkJob.done + count}
    if new_last is not None:
        values["last_id"] = new_last
    if finished:
        values["finished_at"] = func.now()
        if "ids" in params:
            values["total"] = BulkJob.done + count  # the ids that named requests
    batch_jobs.move(session, BulkJob, JobStatus.done if finished else JobStatus.running, job_id, **values)
    return not finished


def _write_cte(op: Op, ids: Select[int], keys: Sequence[str]) -> Any:
    from sqlalchemy import any_, delete
    from sqlalchemy.dialects.postgresql import insert

    from cancelflow.models import CancellationRequestTag, Tag

    keys_param = tags.keys_array(keys)
    if op == "add":
        chosen = ids.subquery("chosen")
        rows = select(chosen.c[0], Tag.id).select_from(chosen.join(Tag, Tag.key == any_(keys_param)))
        return (
            insert(CancellationRequestTag)
            .from_select(["request_id", "tag_id"], rows)
            .on_conflict_do_nothing(index_elements=["request_id", "tag_id"])
            .cte("written")
        )
    return (
        delete(CancellationRequestTag)
        .where(
            CancellationRequestTag.request_id.in_(ids),
            CancellationRequestTag.tag_id.in_(select(Tag.id).where(Tag.key == any_(keys_param))),
        )
        .cte("written")
    )


def mark_failed(session: Session, job_id: uuid.UUID, error: str) -> None:
    batch_jobs.move(session, BulkJob, JobStatus.failed, job_id, error=error[:2000], finished_at=func.now())


# The loop every chunked job shares; a job's own `chunk_size` (`create_job`) wins over CHUNK_SIZE.
drive = batch_jobs.ChunkedJobs("tag", frozenset(KINDS.values()), run_chunk, CHUNK_SIZE).drive


__all__ = [
    "CHUNK_SIZE",
    "KINDS",
    "SYNC_MAX_IDS",
    "Op",
    "apply",
    "apply_to_ids",
    "check_ids",
    "count_selection",
    "create_job",
    "drive",
    "get_job",
    "mark_failed",
    "run_chunk",
    "selection_of",
]
