"""The one place the service reads the time, so tests can move it (time-machine patches this too)."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)
