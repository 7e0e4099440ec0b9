"""Exports of the detailed cancellation-request list, and the export jobs behind large ones.

For the cancellation-request router: when `export_format` is present on the detailed list, return

    export_response(session, request, filters, export_format, *, channel_id=None) -> Response

* `session`: the request's session (`api.deps.DbSession`); a file's rows are read on connections of
  their own, after its transaction ended;
* `request`: the FastAPI/Starlette `Request` (for the absolute job URL of a 202);
* `filters`: the parsed `services.queries.RequestFilters` of the detailed list;
* `export_format`: `"csv" | "xlsx" | "json"` (a `models.ExportFormat` or its value; anything else is a
  400 `{"export_format": ["\\"x\\" is not a valid choice."], "code": "invalid"}`);
* `channel_id`: the channel of the channel twin route, or None.

Up to `settings.export_sync_max_rows` rows (CANCELFLOW_EXPORT_SYNC_MAX_ROWS, default 10000) the file is
streamed in the response (200, `Content-Disposition: attachment`), from a server-side cursor in
constant memory. Above it, an export job is queued and the answer is **202** `{"id", "url"}`:
`GET /api/v1/exports/{id}/` shows its progress and `GET /api/v1/exports/{id}/download/` serves the file
once `status` is `done`. The exported fields are listed in `services.exports`.

A token may have `CANCELFLOW_EXPORT_JOBS_PER_TOKEN` export jobs queued or running (beyond: **429**
`too_many_jobs` with `Retry-After`); a finished job's file is deleted `CANCELFLOW_EXPORT_RETENTION` after it
finished, and its download is then a **410** `export_expired`.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Annotated, BinaryIO

from fastapi import APIRouter, Path, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from cancelflow.api.auth import AkinonCaller, Principal, akinon_staff
from cancelflow.api.bulk_jobs import absolute, send
from cancelflow.api.cancellation_requests import VIEW_IBAN
from cancelflow.api.deps import DbSession
from cancelflow.api.errors import AKINON_RESPONSES
from cancelflow.api.schemas.bulk_jobs import JobAccepted
from cancelflow.api.schemas.exports import ExportJobOut
from cancelflow.config import get_settings
from cancelflow.config.logging import mask_text
from cancelflow.db import get_engine
from cancelflow.errors import Invalid, NotFound
from cancelflow.models import ExportFormat, ExportJob, JobStatus
from cancelflow.models.enums import TokenKind
from cancelflow.services import exports
from cancelflow.services import iban as iban_checks

if TYPE_CHECKING:
    from cancelflow.services.queries import RequestFilters

router = APIRouter(prefix="/api/v1/exports", tags=["exports"], responses=AKINON_RESPONSES)


def parse_format(value: str | ExportFormat) -> ExportFormat:
    try:
        return ExportFormat(str(value).strip().lower())
    except ValueError:
        raise Invalid(
            "invalid export format",
            field_errors={"export_format": [f'"{value}" is not a valid choice.']},
            code="invalid",
        ) from None


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


def _read_and_close(handle: BinaryIO, size: int = 64 * 1024) -> Iterator[bytes]:
    with handle:
        while data := handle.read(size):
            yield data


def export_response(
    session: Session,
    request: Request,
    filters: RequestFilters,
    export_format: str | ExportFormat,
    *,
    channel_id: int | None = None,
    token_id: int | None = None,
) -> Response:
    """The detailed list as a file (streamed), or 202 and an export job when it has too many rows
    (429 when `token_id` has as many export jobs queued or running as it may)."""
    fmt = parse_format(export_format)
    total = exports.count_rows(session, filters, channel_id=channel_id)
    if total > get_settings().export_sync_max_rows:
        job = exports.create_job(
            session,
            fmt,
            filters=filters.as_params(),
            channel_id=channel_id,
            total=total,
            token_id=token_id,
        )
        send(session, "exports.run", job.id)
        accepted = JobAccepted(id=job.id, url=absolute(request, f"/api/v1/exports/{job.id}/"))
        return JSONResponse(accepted.model_dump(mode="json"), status_code=202)
    # The count's transaction ends here: the file is written and streamed on connections of its own.
    session.commit()
    name = f"cancellation_requests.{fmt.value}"
    engine = get_engine()
    stmt = exports.export_select(filters, channel_id=channel_id, typed=fmt == ExportFormat.json)
    if fmt == ExportFormat.xlsx:
        # xlsxwriter needs a seekable file: write it (constant memory), open it, and unlink it before the
        # response starts, so nothing is left in the temporary directory even when the client goes away
        # mid-download (the data lives as long as the open handle).
        handle, raw_path = tempfile.mkstemp(prefix="cf-export-", suffix=".xlsx")
        os.close(handle)
        path = FsPath(raw_path)
        try:
            exports.write_xlsx(exports.stream_batches(engine, stmt), path)
            opened = path.open("rb")
        finally:
            path.unlink(missing_ok=True)
        size = os.fstat(opened.fileno()).st_size
        return StreamingResponse(
            _read_and_close(opened),
            media_type=exports.MEDIA_TYPES[fmt],
            headers={**_attachment(name), "Content-Length": str(size)},
        )
    batches = exports.stream_batches(engine, stmt)
    body = exports.csv_chunks(batches) if fmt == ExportFormat.csv else exports.json_chunks(batches)
    return StreamingResponse(body, media_type=exports.MEDIA_TYPES[fmt], headers=_attachment(name))


def _job(session_job: ExportJob, request: Request, principal: Principal) -> ExportJobOut:
    done = session_job.status == JobStatus.done
    filters = session_job.params.get("filters")
    if (
        isinstance(filters, dict)
        and filters.get("iban")
        and not (principal.is_staff and VIEW_IBAN in principal.permissions)
    ):
        # Another staff member's export may filter by an IBAN this token may not read.
        filters = {**filters, "iban": iban_checks.mask(str(filters["iban"]))}
    return ExportJobOut(
        id=session_job.id,
        format=session_job.format,
        status=session_job.status,
        total=session_job.total,
        done=session_job.done,
        filters=dict(filters) if isinstance(filters, dict) else {},
        download_url=absolute(request, f"/api/v1/exports/{session_job.id}/download/") if done else None,
        error=_job_error(session_job.error, principal),
        created_date=session_job.created_date,
        modified_date=session_job.modified_date,
        finished_at=session_job.finished_at,
    )


def _job_error(error: str | None, principal: Principal) -> str | None:
    """Why an export failed: the exception text for staff (masked unless `view_iban`), a status for a
    storefront token."""
    if error is None:
        return None
    if not principal.is_staff:
        return "The export failed; ask the operator to look at the export job."
    return error if VIEW_IBAN in principal.permissions else mask_text(error)


JobId = Annotated[uuid.UUID, Path(alias="id", description="Export job id.")]


def _visible_job(session: Session, job_id: uuid.UUID, principal: Principal) -> ExportJob:
    """Staff see every export job; a storefront token the jobs its channel's exports started (the 202 it
    got names one), and others are a 404 to it (one without a channel sees them all). Other tokens are a
    403."""
    if principal.kind == TokenKind.storefront:
        job = exports.get_job(session, job_id)
        # A storefront token without a channel acts for every channel, so it follows every export job.
        if principal.channel_id is not None and (job.params or {}).get("channel_id") != principal.channel_id:
            raise NotFound(f"export {job_id} not found")
        return job
    akinon_staff(principal)
    return exports.get_job(session, job_id)


@router.get(
    "/{id}/",
    response_model=ExportJobOut,
    summary="Progress of an export job",
    description="An export of the detailed cancellation-request list that was too large to stream "
    "(`export_format` with more than `CANCELFLOW_EXPORT_SYNC_MAX_ROWS` rows). Staff token, or the storefront "
    "token of the channel whose export started it.",
)
def get_export(job_id: JobId, request: Request, principal: AkinonCaller, session: DbSession) -> ExportJobOut:
    return _job(_visible_job(session, job_id, principal), request, principal)


@router.get(
    "/{id}/download/",
    response_class=FileResponse,
    summary="Download an export file",
    description="The file of a finished export job. **409** while the job is not `done`; **410** once the "
    "file was deleted, `CANCELFLOW_EXPORT_RETENTION` after the job finished (status `expired`). Staff token, "
    "or the storefront token of the channel whose export started it.",
    responses={
        200: {"content": {media: {} for media in exports.MEDIA_TYPES.values()}, "description": "The file."},
        409: {"description": "The export is not finished."},
        410: {"description": "The export expired: its file was deleted after the retention period."},
    },
)
def download_export(job_id: JobId, principal: AkinonCaller, session: DbSession) -> FileResponse:
    ready = exports.ready_file(_visible_job(session, job_id, principal))
    return FileResponse(ready.path, media_type=ready.media_type, filename=ready.name)
