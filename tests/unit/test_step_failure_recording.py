"""When a step's failure cannot be recorded, the worker tells an outage from a refused statement: only the
outage is worth sending the message again shortly (the database will be back); a refused statement would
only repeat, so the step is left to the sweeper after its grace."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from celery.exceptions import Retry
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from cancelflow.errors import TransientError
from cancelflow.tasks.cancellations import route
from cancelflow.worker.base import DbTask


def _session_failing_with(error: DBAPIError) -> object:
    @contextmanager
    def session(self: DbTask) -> Iterator[Session]:
        raise error
        yield  # a generator, as the real one

    return session


@pytest.fixture
def retries(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """What the task asked Celery to send again (a worker would publish it; here it is recorded)."""
    asked: list[dict[str, object]] = []

    def retry(**options: object) -> Retry:
        asked.append(options)
        return Retry("recorded", None)

    monkeypatch.setattr(route, "retry", retry)
    return asked


def test_an_outage_while_recording_sends_the_message_again(
    monkeypatch: pytest.MonkeyPatch, retries: list[dict[str, object]]
) -> None:
    down = OperationalError("SELECT 1", {}, Exception("connection refused"))
    monkeypatch.setattr(DbTask, "session", _session_failing_with(down))
    with pytest.raises(Retry):
        route._failed(7, TransientError("gateway timeout"), permanent=False)
    [asked] = retries
    assert asked["args"] == (7,)
    assert 0 < float(str(asked["countdown"])) <= 2


def test_a_refused_statement_while_recording_is_not_retried_as_an_outage(
    monkeypatch: pytest.MonkeyPatch, retries: list[dict[str, object]]
) -> None:
    refused = ProgrammingError("SELECT 1", {}, Exception('relation "workflow_steps" does not exist'))
    monkeypatch.setattr(DbTask, "session", _session_failing_with(refused))
    with pytest.raises(ProgrammingError):
        route._failed(7, TransientError("gateway timeout"), permanent=False)
    assert retries == []
