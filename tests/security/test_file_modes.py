"""Export files (names, e-mails, masked IBANs) and the logs of `cancelflow run`'s children are the owner's
alone (0600, in 0700 directories), like the credentials file; whatever the umask, and also for a log an
older version left readable. Exports are written here by the code the `exports.run` task calls."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cancelflow.cli import run as run_mod
from cancelflow.db import get_engine
from cancelflow.models import ExportFormat
from cancelflow.private_files import private_dir
from cancelflow.services import exports
from cancelflow.services.queries import RequestFilters
from tests.api.test_tags import make_requests


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def lax_umask() -> Iterator[None]:
    """The usual umask, under which a plain open() makes 0644 files."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.parametrize("export_format", list(ExportFormat))
def test_export_files_are_private(database: str, tmp_path: Path, export_format: ExportFormat) -> None:
    (rid,) = make_requests(1)
    directory = private_dir(exports.exports_dir(tmp_path))  # as tasks/exports.py prepares it
    path = directory / f"job.{export_format.value}"
    rows = exports.write_file(get_engine(), export_format, path, RequestFilters.parse([("pk", str(rid))]))
    assert rows == 1
    assert mode(path) == 0o600
    assert mode(directory) == 0o700
    assert not path.with_name(path.name + ".part").exists()


def test_child_logs_are_private(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir(mode=0o755)
    old = log_dir / "older.log"
    old.write_text("written by an earlier version\n")
    old.chmod(0o644)
    specs = [
        run_mod.ChildSpec("talker", [sys.executable, "-c", "print('hello', flush=True)"]),
        run_mod.ChildSpec("older", [sys.executable, "-c", "print('again', flush=True)"]),
    ]
    supervisor = run_mod.Supervisor(specs, env=dict(os.environ), log_dir=log_dir, stop_timeout=2.0)
    supervisor.start()
    try:
        for child in supervisor.children:
            child.proc.wait(timeout=30)
    finally:
        supervisor.stop()
    assert mode(log_dir) == 0o700
    assert mode(log_dir / "talker.log") == 0o600
    assert mode(old) == 0o600
    assert old.read_text().startswith("written by an earlier version")  # appended to, not truncated
    assert "again" in old.read_text()
