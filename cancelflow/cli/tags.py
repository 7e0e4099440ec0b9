"""`cancelflow tags …`: bulk add / remove tag keys on requests selected by list filters.

    cancelflow tags bulk-add vip --filter status=approved --filter email=x@y
    cancelflow tags bulk-remove vip --filter cancellation_plan_status=failed
    cancelflow tags resume JOB_ID

The selection takes any list filter (`services.queries.RequestFilters`, query-parameter names and
aliases). The job is the same `tags.bulk` job the API starts for more than 1,000 ids: by default a worker
runs it and this command follows its progress row; `--inline` runs it in this process instead.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cancelflow.cli.guard import fail

console = Console()
err = Console(stderr=True)
tags_app = typer.Typer(help="Bulk tagging of cancellation requests.", no_args_is_help=True)

FilterOption = Annotated[
    list[str] | None,
    typer.Option("--filter", "-f", help="A list filter NAME=VALUE (repeatable), e.g. status=approved."),
]


def parse_filters(values: list[str] | None) -> dict[str, str]:
    """`["status=approved", "email=x@y"]` -> a validated filter mapping (Invalid -> exit 2)."""
    from cancelflow.errors import Invalid
    from cancelflow.services.queries import RequestFilters

    pairs: list[tuple[str, str]] = []
    for value in values or []:
        name, sep, raw = value.partition("=")
        if not sep or not name.strip():
            fail(f"--filter {value!r} is not NAME=VALUE", 2)
        pairs.append((name.strip(), raw))
    try:
        return RequestFilters.parse(pairs).as_params()
    except Invalid as exc:
        for field, messages in exc.field_errors.items():
            err.print(f"  {field}: {'; '.join(messages)}")
        fail("invalid filter", 2)


def follow(job_id: uuid.UUID, *, interval: float = 0.5) -> str:
    """Show a progress bar fed by the job row until the job is done or failed; returns its status."""
    from cancelflow.db import transaction
    from cancelflow.models import JobStatus
    from cancelflow.services import bulk

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task(f"job {job_id}", total=None)
        while True:
            with transaction() as session:
                job = bulk.get_job(session, job_id)
                status, done, total, error = job.status, job.done, job.total, job.error
            progress.update(bar, completed=done, total=max(total, done) or None, description=status.value)
            if status in (JobStatus.done, JobStatus.failed):
                break
            time.sleep(interval)
    if status == JobStatus.failed:
        fail(f"job {job_id} failed: {error}")
    return status.value


def _start(job_id: uuid.UUID, *, inline: bool, chunk_size: int) -> None:
    from cancelflow.db import transaction
    from cancelflow.services import bulk

    if inline:
        # The job runs beside the progress bar, which reads only the committed progress row.
        def run() -> None:
            try:
                bulk.drive(job_id, transaction, chunk_size=chunk_size)
            except Exception as exc:  # noqa: BLE001 - recorded on the job row, which `follow` reports
                try:
                    with transaction() as session:
                        bulk.mark_failed(session, job_id, f"{type(exc).__name__}: {exc}")
                except Exception:  # noqa: BLE001 - the database itself is away: `follow` reports that
                    return

        threading.Thread(target=run, name=f"bulk-{job_id}", daemon=True).start()
        return
    from cancelflow.services import after_commit

    # The job row is committed: send now, so that a broker that does not answer is this command's error.
    after_commit.send_now(after_commit.Send("tags.bulk", (str(job_id),)))


def _bulk(
    op: str, keys: list[str], filters: list[str] | None, *, inline: bool, chunk_size: int, wait: bool
) -> None:
    from cancelflow.db import transaction
    from cancelflow.models.tags import TAG_KEY_MAX_LENGTH
    from cancelflow.services import bulk

    bad = [k for k in keys if not 1 <= len(k) <= TAG_KEY_MAX_LENGTH]
    if bad:
        fail(f"tag keys must be 1..{TAG_KEY_MAX_LENGTH} characters: {bad[0]!r}", 2)
    from cancelflow.errors import Invalid

    selection = parse_filters(filters)
    try:
        with transaction() as session:
            job = bulk.create_job(session, "add" if op == "add" else "remove", keys, filters=selection)
            job_id, total = job.id, job.total
    except Invalid as exc:  # a limit (keys, tags per request, rows): nothing was stored
        for field, messages in exc.field_errors.items():
            err.print(f"  {field}: {'; '.join(messages)}")
        fail(f"{exc.message} ({exc.code})")
    console.print(f"job {job_id}: {op} {', '.join(keys)} on {total} requests")
    _start(job_id, inline=inline, chunk_size=chunk_size)
    if wait or inline:
        follow(job_id)


Inline = Annotated[bool, typer.Option("--inline", help="Run the job in this process, not on a worker.")]
Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the job's progress until it ends.")]
Chunk = Annotated[int, typer.Option(min=1, max=100_000, help="Requests per committed chunk (--inline).")]
Keys = Annotated[list[str], typer.Argument(help="Tag keys.")]


def _bulk_command(op: str, help_text: str) -> Callable[..., None]:
    """The `bulk-<op>` command: `_bulk` with the options both bulk commands take."""

    def command(
        keys: Keys,
        filters: FilterOption = None,
        inline: Inline = False,
        wait: Wait = True,
        chunk_size: Chunk = 5000,
    ) -> None:
        _bulk(op, keys, filters, inline=inline, chunk_size=chunk_size, wait=wait)

    command.__name__ = f"bulk_{op}"
    command.__doc__ = help_text
    return command


bulk_add = tags_app.command("bulk-add")(
    _bulk_command("add", "Add tag keys to every request the filters select (no filter: every request).")
)
bulk_remove = tags_app.command("bulk-remove")(
    _bulk_command("remove", "Remove tag keys from every request the filters select.")
)


@tags_app.command("resume")
def resume(job_id: uuid.UUID, inline: Inline = False, chunk_size: Chunk = 5000) -> None:
    """Continue a job after its last committed chunk (a lost message, a crashed worker)."""
    from cancelflow.db import transaction
    from cancelflow.errors import NotFound
    from cancelflow.services import bulk

    try:
        with transaction() as session:
            bulk.get_job(session, job_id)  # before any thread or message: a clear error if it is not there
    except NotFound as exc:
        fail(exc.message)
    _start(job_id, inline=inline, chunk_size=chunk_size)
    follow(job_id)
