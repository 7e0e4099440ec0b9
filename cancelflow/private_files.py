"""Files that hold personal data or what a process logs (exports, child logs): the owner's alone, from the
first byte, like the credentials file. The mode is given to `os.open` (and set again on a file an older
version left readable), so no umask and no window between creating and narrowing it matters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Final, Literal

FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700


def open_private(path: Path, mode: Literal["wb", "ab"] = "wb") -> BinaryIO:
    """Open `path` for writing (truncated, or appended to with "ab"), readable by the owner only."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def create_private(path: Path) -> Path:
    """An empty owner-only file at `path`, for a library that opens the path itself (its mode is kept)."""
    open_private(path).close()
    return path


def private_dir(path: Path) -> Path:
    """`path` and its missing parents; `path` itself is made the owner's alone."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(DIR_MODE)
    return path
