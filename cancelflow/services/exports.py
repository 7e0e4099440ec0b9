"""Exports of the detailed cancellation-request list: CSV, XLSX or JSON, in constant memory.

One SELECT gives every export field already formatted by PostgreSQL (ISO 8601 UTC timestamps, masked
IBAN, tags joined), so writers only copy values. Rows come from a server-side cursor in batches
(`stream_results`), CSV and JSON are produced batch by batch, and XLSX goes through xlsxwriter's
`constant_memory` mode into a file: memory does not grow with the row count.

Small exports stream in the HTTP response; above `settings.export_sync_max_rows` rows an `ExportJob` is
created and the `exports.run` task writes `<data_dir>/exports/<id>.<ext>`, which the API then serves.
Every statement runs under the `job_statement_timeout`; a token may have `export_jobs_per_token` jobs
queued or running; the beat task `exports.expire` deletes a finished job's file `export_retention` after
it finished and marks the job `expired`.

Export fields (the order of CSV / XLSX columns and of JSON object keys):
"""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import (
    ColumnElement,
    Engine,
    Integer,
    Interval,
    Select,
    String,
    Text,
    bindparam,
    case,
    cast,
    func,
    select,
    update,
)
from sqlalchemy.orm import Session

from cancelflow.errors import Conflict, Gone, NotFound
from cancelflow.models import (
    CancellationPlan,
    CancellationRequest,
    CancellationRequestTag,
    ExportFormat,
    ExportJob,
    JobStatus,
    Order,
    OrderItem,
    Tag,
)
from cancelflow.models.batch_jobs import JOB_MACHINE
from cancelflow.private_files import create_private, open_private
from cancelflow.services import batch_jobs, limits

if TYPE_CHECKING:
    from cancelflow.services.queries import RequestFilters

BATCH_ROWS = 5000
TAG_SEPARATOR = "|"
MEDIA_TYPES: dict[ExportFormat, str] = {
    ExportFormat.csv: "text/csv; charset=utf-8",
    ExportFormat.xlsx: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ExportFormat.json: "application/json",
}


@dataclass(frozen=True, slots=True)
class ExportField:
    name: str
    description: str
    # Written by PostgreSQL from a typed column (a number, a date, an enum): never a formula. Every other
    # field may carry text someone typed, and is neutralised in CSV and XLSX (see `neutralise`).
    formatted: bool = False


FIELDS: tuple[ExportField, ...] = (
    ExportField("id", "Cancellation request id.", formatted=True),
    ExportField("uuid", "Cancellation request UUID.", formatted=True),
    ExportField("created_date", "Creation time, ISO 8601 UTC.", formatted=True),
    ExportField("modified_date", "Last modification time, ISO 8601 UTC.", formatted=True),
    ExportField("status", "Request status.", formatted=True),
    ExportField("cancellation_type", "`cancel` or `refund`.", formatted=True),
    ExportField("order_number", "The order's number."),
    ExportField("order_item", "Order item id.", formatted=True),
    ExportField("sku", "The order item's SKU."),
    ExportField("quantity", "Quantity to cancel.", formatted=True),
    ExportField("reason", "Cancellation reason id.", formatted=True),
    ExportField("plan_status", "Status of the cancellation plan (empty: no plan yet).", formatted=True),
    ExportField("plan_amount", "Amount the plan refunds, decimal string.", formatted=True),
    ExportField("currency", "Currency of the plan (of the order when there is no plan)."),
    ExportField("refund_target", "original_payment, bank_transfer or loyalty_money.", formatted=True),
    ExportField("iban_masked", "IBAN with all but the country code and the last four characters masked."),
    ExportField("holder_name", "Account holder name."),
    ExportField("fully_refund_as_loyalty_money", "Loyalty-money refund flag (true / false).", formatted=True),
    ExportField(
        "tags", f"Tag keys in key order: joined by `{TAG_SEPARATOR}` in CSV and XLSX, an array in JSON."
    ),
)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
__doc__ = (
    (__doc__ or "")
    + "".join(f"\n* `{f.name}`: {f.description}" for f in FIELDS)
    + "\n\nIn CSV and XLSX, a text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return "
    "gets a leading `'` (OWASP's rule against formula injection), and XLSX cells are written as text "
    "strings, never as formulas or links. JSON carries the values unchanged.\n"
)

# What makes a spreadsheet read a cell as a formula (or DDE command).
FORMULA_START: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")
_TEXT_COLUMNS: tuple[int, ...] = tuple(i for i, f in enumerate(FIELDS) if not f.formatted)


def neutralise(value: Any) -> Any:
    """A text value a spreadsheet would evaluate gets a leading `'`, which makes it plain text."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _neutralised(rows: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for row in rows:
        cells = None
        for i in _TEXT_COLUMNS:
            value = row[i]
            if isinstance(value, str) and value.startswith(FORMULA_START):
                if cells is None:
                    cells = list(row)
                cells[i] = "'" + value
        out.append(row if cells is None else cells)
    return out


def _iso(column: Any) -> ColumnElement[str]:
    return func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')


def _masked_iban() -> ColumnElement[str | None]:
    """`iban.mask` in SQL (IBANs are stored compact): the country and the last four characters."""
    iban = CancellationRequest.iban
    return case(
        (
            func.length(iban) > 6,
            func.concat(func.left(iban, 2), func.repeat("*", func.length(iban) - 6), func.right(iban, 4)),
        ),
        else_=func.repeat("*", func.length(iban)),
    )


def export_select(
    filters: RequestFilters | None = None,
    *,
    channel_id: int | None = None,
    typed: bool = False,
    tag: str | None = None,
) -> Select[Any]:
    """The export rows in id order. `typed`: ints, booleans and a tag array (JSON); else all text.
    `tag`: only the requests that carry it (the list's tag filter)."""
    tag_keys = (
        select(Tag.key)
        .join(CancellationRequestTag, CancellationRequestTag.tag_id == Tag.id)
        .where(CancellationRequestTag.request_id == CancellationRequest.id)
        .order_by(Tag.key)
    )
    tags_column: ColumnElement[Any]
    if typed:
        tags_column = func.array(tag_keys.scalar_subquery())
    else:
        tags_column = func.array_to_string(func.array(tag_keys.scalar_subquery()), TAG_SEPARATOR)
    loyalty: Any = CancellationRequest.fully_refund_as_loyalty_money
    if not typed:
        loyalty = case((loyalty, "true"), else_="false")
    columns: list[Any] = [
        CancellationRequest.id,
        cast(CancellationRequest.uuid, Text),
        _iso(CancellationRequest.created_date),
        _iso(CancellationRequest.modified_date),
        cast(CancellationRequest.status, String),
        cast(CancellationRequest.cancellation_type, String),
        Order.number,
        CancellationRequest.order_item_id,
        OrderItem.sku,
        CancellationRequest.quantity,
        CancellationRequest.reason_id,
        cast(CancellationPlan.status, String),
        cast(CancellationPlan.amount, Text),
        func.coalesce(CancellationPlan.currency, Order.currency),
        cast(CancellationPlan.refund_target, String),
        _masked_iban(),
        CancellationRequest.holder_name,
        loyalty,
        tags_column,
    ]
    stmt = (
        select(*(column.label(name) for column, name in zip(columns, FIELD_NAMES, strict=True)))
        .select_from(CancellationRequest)
        .join(Order, Order.id == CancellationRequest.order_id)
        .join(OrderItem, OrderItem.id == CancellationRequest.order_item_id)
        .outerjoin(CancellationPlan, CancellationPlan.request_id == CancellationRequest.id)
        .order_by(CancellationRequest.id)
    )
    return _narrow(stmt, filters, channel_id, tag)


def _narrow(
    stmt: Select[Any], filters: RequestFilters | None, channel_id: int | None, tag: str | None = None
) -> Select[Any]:
    if filters is not None:
        from cancelflow.services.queries import filter_requests

        stmt = filter_requests(stmt, filters)
    if channel_id is not None:
        stmt = stmt.where(CancellationRequest.channel_id == channel_id)
    if tag:
        from cancelflow.services.tags import has_any_tag

        stmt = stmt.where(has_any_tag([tag]))
    return stmt


def count_rows(
    session: Session,
    filters: RequestFilters | None = None,
    *,
    channel_id: int | None = None,
    tag: str | None = None,
) -> int:
    """How many rows the export would have (exact: it decides between streaming and a job)."""
    stmt = _narrow(select(CancellationRequest.id), filters, channel_id, tag)
    return int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)


# --- rows and writers -------------------------------------------------------------------------------------


def stream_batches(engine: Engine, stmt: Select[Any], *, batch: int = BATCH_ROWS) -> Iterator[Sequence[Any]]:
    """Rows (plain tuples) in batches from a server-side cursor on a connection of its own.

    The export SELECT yields only text, numbers, booleans and text arrays, which need no SQLAlchemy result
    processing: after SQLAlchemy has executed it (binding the filter values), batches come straight from
    the DBAPI cursor, which halves the cost per row.
    """
    with engine.connect() as connection:
        # A cursor is planned for its first 10% of rows by default (nested loops); an export reads them
        # all, so plan it as COPY would be planned (hash joins).
        connection.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")
        limits.set_statement_timeout(connection)  # each fetch, so a runaway export fails, never hogs
        result = connection.execution_options(stream_results=True, max_row_buffer=batch).execute(stmt)
        try:
            # SQLAlchemy reads one row ahead to set up a server-side result; take it from its buffer first.
            first: list[Any] = [tuple(row) for row in result.fetchmany(1)]
            cursor = result.cursor
            rows: Sequence[Any] = first + list(cursor.fetchmany(batch - len(first))) if first else []
            while rows:
                yield rows
                rows = cursor.fetchmany(batch)
        finally:
            result.close()
            connection.rollback()


class _Buffer(io.StringIO):
    def take(self) -> bytes:
        data = self.getvalue().encode()
        self.seek(0)
        self.truncate()
        return data


def csv_chunks(batches: Iterator[Sequence[Any]]) -> Iterator[bytes]:
    buffer = _Buffer()
    # RFC 4180 line ends: with "\r\n" as the terminator, a value holding a CR or LF is quoted, so it can
    # never start a row of its own.
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(FIELD_NAMES)
    for rows in batches:
        writer.writerows(_neutralised(rows))
        yield buffer.take()
    yield buffer.take()


def json_chunks(batches: Iterator[Sequence[Any]]) -> Iterator[bytes]:
    """A JSON array of objects, written batch by batch (rows from the `typed` select)."""
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
    yield b"["
    first = True
    for rows in batches:
        parts = [encoder.encode(dict(zip(FIELD_NAMES, row, strict=True))) for row in rows]
        if not parts:
            continue
        yield (("" if first else ",") + ",".join(parts)).encode()
        first = False
    yield b"]"


def write_xlsx(batches: Iterator[Sequence[Any]], path: Path) -> int:
    """Write an XLSX workbook row by row (constant memory); returns the data rows written."""
    import xlsxwriter

    # Text stays text: no formulas, no links, no numbers made of strings, whatever a value looks like.
    options = {
        "constant_memory": True,
        "strings_to_numbers": False,
        "strings_to_formulas": False,
        "strings_to_urls": False,
    }
    workbook = xlsxwriter.Workbook(str(path), options)
    try:
        sheet = workbook.add_worksheet("cancellation_requests")
        bold = workbook.add_format({"bold": True})
        for column, name in enumerate(FIELD_NAMES):
            sheet.write_string(0, column, name, bold)
        row_number = 0
        for rows in batches:
            for row in _neutralised(rows):
                row_number += 1
                for column, value in enumerate(row):
                    if value is None:
                        continue
                    if isinstance(value, str):
                        sheet.write_string(row_number, column, value)
                    elif isinstance(value, bool):
                        sheet.write_boolean(row_number, column, value)
                    elif isinstance(value, int | float):
                        sheet.write_number(row_number, column, value)
                    else:
                        sheet.write_string(row_number, column, str(value))
    finally:
        workbook.close()
    return row_number


Progress = Callable[[int], None]


def write_file(
    engine: Engine,
    export_format: ExportFormat,
    path: Path,
    filters: RequestFilters | None = None,
    *,
    channel_id: int | None = None,
    progress: Progress | None = None,
    tag: str | None = None,
) -> int:
    """Write the whole export to `path` (via a temporary file and a rename); returns the rows written."""
    stmt = export_select(filters, channel_id=channel_id, typed=export_format == ExportFormat.json, tag=tag)
    written = 0

    def counted() -> Iterator[Sequence[Any]]:
        nonlocal written
        for rows in stream_batches(engine, stmt):
            yield rows
            written += len(rows)
            if progress is not None:
                progress(written)

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    # Names, e-mails and (masked) IBANs: the file is the owner's alone, like the credentials.
    try:
        if export_format == ExportFormat.xlsx:
            write_xlsx(counted(), create_private(partial))
        else:
            chunks = csv_chunks(counted()) if export_format == ExportFormat.csv else json_chunks(counted())
            with open_private(partial) as out:
                for chunk in chunks:
                    out.write(chunk)
    except BaseException:
        partial.unlink(missing_ok=True)  # no half file is left behind for the retention sweep to miss
        raise
    os.replace(partial, path)
    return written


# --- export jobs ------------------------------------------------------------------------------------------


def exports_dir(data_dir: Path) -> Path:
    return (data_dir / "exports").resolve()


def create_job(
    session: Session,
    export_format: ExportFormat,
    *,
    filters: dict[str, Any],
    channel_id: int | None = None,
    total: int = 0,
    token_id: int | None = None,
    user_id: int | None = None,
    tag: str | None = None,
) -> ExportJob:
    """A pending export job; TooManyJobs (nothing stored) when `token_id` (or the console's `user_id`)
    has `export_jobs_per_token` jobs queued or running already. `tag`: only requests carrying it."""
    limits.claim_job_slot(session, ExportJob, token_id, user_id=user_id)
    params: dict[str, Any] = {"filters": filters, "channel_id": channel_id}
    if token_id is not None:
        params["token_id"] = token_id
    if user_id is not None:
        params["user_id"] = user_id
    if tag:
        params["tag"] = tag
    job = ExportJob(
        id=uuid.uuid4(),
        format=export_format,
        status=JobStatus.pending,
        total=total,
        params=params,
    )
    return batch_jobs.add(session, job)


def get_job(session: Session, job_id: uuid.UUID) -> ExportJob:
    return batch_jobs.get(session, ExportJob, job_id, what="export")


def claim_job(session: Session, job_id: uuid.UUID) -> ExportJob | None:
    """Mark the job running (again, after a crash: the file is rewritten whole); None when finished."""
    job = session.scalars(select(ExportJob).where(ExportJob.id == job_id).with_for_update()).one_or_none()
    if job is None:
        raise NotFound(f"export {job_id} not found")
    if not JOB_MACHINE.allows(job.status, JobStatus.running):
        return None
    batch_jobs.move(session, ExportJob, JobStatus.running, job_id, done=0)
    return job


def record_progress(session: Session, job_id: uuid.UUID, done: int) -> None:
    """A running job's progress; a writer still going after its job finished or failed changes nothing."""
    session.execute(
        update(ExportJob)
        .where(ExportJob.id == job_id, ExportJob.status == JobStatus.running)
        .values(done=done)
    )


def finish_job(session: Session, job_id: uuid.UUID, *, path: Path, rows: int) -> None:
    batch_jobs.move(
        session,
        ExportJob,
        JobStatus.done,
        job_id,
        file_path=str(path),
        done=rows,
        total=rows,
        finished_at=func.now(),
    )


def fail_job(session: Session, job_id: uuid.UUID, error: str) -> None:
    batch_jobs.move(session, ExportJob, JobStatus.failed, job_id, error=error[:2000], finished_at=func.now())


EXPIRE_BATCH = 500


# Built once: the sweep runs every tick, and building and keying the statement cost more than running it.
_EXPIRED: Final = (
    select(ExportJob)
    .where(
        ExportJob.status == JobStatus.done,
        ExportJob.finished_at < func.now() - bindparam("retention", type_=Interval()),
    )
    .order_by(ExportJob.finished_at)
    .limit(bindparam("batch", type_=Integer()))
    .with_for_update(skip_locked=True)
)


def expire_jobs(session: Session, *, retention: timedelta, batch: int = EXPIRE_BATCH) -> int:
    """Delete the files of export jobs that finished more than `retention` ago and mark them `expired`;
    returns how many. Rows are taken `FOR UPDATE SKIP LOCKED`, so overlapping sweeps share the work. A
    file is unlinked before its row commits: a failed commit leaves a `done` job whose file is gone (its
    download says so) and the next sweep marks it."""
    jobs = list(session.scalars(_EXPIRED, {"retention": retention, "batch": batch}))
    for job in jobs:
        if job.file_path:
            Path(job.file_path).unlink(missing_ok=True)
    if jobs:
        batch_jobs.move(session, ExportJob, JobStatus.expired, *(job.id for job in jobs), file_path=None)
    return len(jobs)


def file_name(job: ExportJob) -> str:
    return f"cancellation_requests_{job.id}.{job.format.value}"


@dataclass(frozen=True, slots=True)
class ReadyFile:
    """A finished export's file, as a download serves it."""

    path: Path
    media_type: str
    name: str


def ready_file(job: ExportJob) -> ReadyFile:
    """The job's file to download: Gone (`export_expired`) once the retention sweep deleted it, Conflict
    (`export_not_ready`) while the job is not done, NotFound when the file went missing."""
    if job.status == JobStatus.expired:
        raise Gone(
            f"export {job.id} expired: its file was deleted after the retention period", code="export_expired"
        )
    if job.status != JobStatus.done or not job.file_path:
        raise Conflict(f"export {job.id} is {job.status.value}, not done", code="export_not_ready")
    path = Path(job.file_path)
    if not path.is_file():
        raise NotFound(f"the file of export {job.id} is gone")
    return ReadyFile(path, MEDIA_TYPES[job.format], file_name(job))


__all__ = [
    "BATCH_ROWS",
    "FIELDS",
    "FIELD_NAMES",
    "FORMULA_START",
    "MEDIA_TYPES",
    "TAG_SEPARATOR",
    "ExportField",
    "ReadyFile",
    "claim_job",
    "count_rows",
    "create_job",
    "csv_chunks",
    "expire_jobs",
    "export_select",
    "exports_dir",
    "fail_job",
    "file_name",
    "finish_job",
    "get_job",
    "json_chunks",
    "neutralise",
    "ready_file",
    "record_progress",
    "stream_batches",
    "write_file",
    "write_xlsx",
]
