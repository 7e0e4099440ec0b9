"""The state file of a running `cancelflow run`: how other commands find its servers without an export.

`cancelflow run` writes ``<data_dir>/stack.json`` (mode 0600: it holds the database URL) once it knows the
database and broker it uses, and removes it when it stops. A command started without
`CANCELFLOW_DATABASE_URL` / `CANCELFLOW_BROKER_URL` reads it from the same data dir, and uses it only while
the process that wrote it is still that process (a file left by a killed run is ignored).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import psutil

STATE_FILE: Final = "stack.json"


@dataclass(frozen=True)
class StackState:
    pid: int
    # psutil's creation time of `pid`: a later process that reuses the pid does not pass for the run.
    started: float
    database_url: str
    broker_url: str
    api_url: str


def checkout_root() -> Path | None:
    """The source checkout this package runs from (where pyproject.toml is), or None for an installed one."""
    root = Path(__file__).resolve().parent.parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def state_path(data_dir: Path) -> Path:
    return data_dir.expanduser() / STATE_FILE


def write_state(
    data_dir: Path, *, database_url: str, broker_url: str, api_url: str, pid: int | None = None
) -> Path:
    """Record this process as the running stack (atomically, readable by the owner only)."""
    pid = os.getpid() if pid is None else pid
    state = StackState(
        pid=pid,
        started=psutil.Process(pid).create_time(),
        database_url=database_url,
        broker_url=broker_url,
        api_url=api_url,
    )
    path = state_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(state), fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def remove_state(data_dir: Path, *, pid: int | None = None) -> None:
    """Remove the state file if this process (or `pid`) wrote it; another run's file stays."""
    pid = os.getpid() if pid is None else pid
    path = state_path(data_dir)
    state = _load(path)
    if state is not None and state.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def read_running(data_dir: Path) -> StackState | None:
    """The stack running with its data under `data_dir`, or None (no file, unreadable, or its run is gone)."""
    state = _load(state_path(data_dir))
    if state is None:
        return None
    try:
        alive = abs(psutil.Process(state.pid).create_time() - state.started) < 1.0
    except psutil.Error:
        return None
    return state if alive else None


def _load(path: Path) -> StackState | None:
    try:
        data = json.loads(path.read_text())
        return StackState(
            pid=int(data["pid"]),
            started=float(data["started"]),
            database_url=str(data["database_url"]),
            broker_url=str(data["broker_url"]),
            api_url=str(data["api_url"]),
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None
