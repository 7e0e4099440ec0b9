"""Progress of background jobs: `GET /api/v1/bulk_jobs/{id}/` (bulk tagging).

Also the one way the API hands a job to the workers: asked for in the transaction that writes the job row
and sent after it commits (`enqueue_after_commit`), so a worker never looks for a row that is not there
yet. If the broker is away the job stays `pending` and `cancelflow tags resume JOB_ID` (or a re-sent
message) runs it; every chunk is resumable.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Request
from sqlalchemy.orm import Session

from cancelflow.api import links
from cancelflow.api.auth import AkinonStaff
from cancelflow.api.deps import DbSession
from cancelflow.api.errors import AKINON_RESPONSES
from cancelflow.api.schemas.bulk_jobs import BulkJobOut
from cancelflow.services import after_commit, bulk

router = APIRouter(prefix="/api/v1/bulk_jobs", tags=["jobs"], responses=AKINON_RESPONSES)


def send(session: Session, task: str, job_id: uuid.UUID) -> None:
    """Queue `task(job_id)` once this transaction (which writes the job row) commits. A failed send leaves
    the job pending (module docstring)."""
    after_commit.enqueue_after_commit(session, task, str(job_id))


def absolute(request: Request, path: str) -> str:
    """The link to `path` (`api.links`: under the public base URL, never the request's Host)."""
    return links.link(path)


@router.get(
    "/{id}/",
    response_model=BulkJobOut,
    summary="Progress of a bulk tag job",
    description="Status and progress of a bulk add/remove-tags job started with more than "
    f"{bulk.SYNC_MAX_IDS} ids (or by `cancelflow tags bulk-add`). Staff token.",
)
def get_bulk_job(
    id: Annotated[uuid.UUID, Path(description="Job id.")], principal: AkinonStaff, session: DbSession
) -> BulkJobOut:
    return BulkJobOut.model_validate(bulk.get_job(session, id))
