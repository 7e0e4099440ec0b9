"""`cancelflow export`: the detailed request list to a file, with the API's export fields and filters.

    cancelflow export --format csv --filter status=completed -o completed.csv

Runs in this process (streaming, constant memory) with a progress bar; the fields are those of
`services.exports.FIELDS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cancelflow.cli.tags import FilterOption, parse_filters

console = Console(stderr=True)


def export(
    export_format: Annotated[str, typer.Option("--format", help="csv, xlsx or json.")] = "csv",
    filters: FilterOption = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write (default cancellation_requests.<format>)."),
    ] = None,
) -> None:
    """Export the detailed cancellation-request list (the API's `export_format`), filtered like the list."""
    from cancelflow.db import get_engine, transaction
    from cancelflow.models import ExportFormat
    from cancelflow.services import exports
    from cancelflow.services.queries import RequestFilters

    try:
        fmt = ExportFormat(export_format.lower())
    except ValueError:
        console.print(f"[red]error:[/red] --format must be csv, xlsx or json, not {export_format!r}")
        raise typer.Exit(2) from None
    selection = RequestFilters.parse(parse_filters(filters))
    path = output or Path(f"cancellation_requests.{fmt.value}")
    with transaction() as session:
        total = exports.count_rows(session, selection)
    with Progress(
        TextColumn("[bold]export"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        bar = progress.add_task("export", total=total)
        rows = exports.write_file(
            get_engine(), fmt, path, selection, progress=lambda n: progress.update(bar, completed=n)
        )
    console.print(f"{rows} rows written to {path}")
