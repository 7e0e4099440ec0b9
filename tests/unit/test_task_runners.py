"""The two task runners of `DbTask`: how each classifies what a step's handler or a job's body raised."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, NoReturn

import pytest
from celery.exceptions import Retry, SoftTimeLimitExceeded
from sqlalchemy.exc import IntegrityError, OperationalError

from cancelflow.errors import AlreadyHandled, Invalid, NotFound, PermanentError, Refused, TransientError
from cancelflow.models.enums import StepKind, StepStatus
from cancelflow.models.transitions import InvalidTransition
from cancelflow.services import limits, steps, task_ids
from cancelflow.worker.base import (
    DbTask,
    JobFailure,
    StepFailure,
    classify_job_error,
    classify_step_error,
)


class _PgError(Exception):
    def __init__(self, pgcode: str) -> None:
        super().__init__(pgcode)
        self.pgcode = pgcode


def _db_error(pgcode: str = "08006") -> OperationalError:
    return OperationalError("SELECT 1", {}, _PgError(pgcode))


STATEMENT_TIMEOUT = _db_error(limits.QUERY_CANCELED)


class TestClassifyStepError:
    @pytest.mark.parametrize(
        ("exc", "expected"),
        [
            (AlreadyHandled("done before"), StepFailure.already_handled),
            (Refused("not yours", reason="wrong_kind"), StepFailure.refused),
            (TransientError("gateway 503"), StepFailure.transient),
            (SoftTimeLimitExceeded(), StepFailure.transient),
            (_db_error(), StepFailure.transient),
            (IntegrityError("INSERT", {}, _PgError("23505")), StepFailure.transient),
            (PermanentError("no payment reference"), StepFailure.permanent),
            (Invalid("bad reply"), StepFailure.permanent),
            (NotFound("plan gone"), StepFailure.permanent),
            (
                InvalidTransition("plan: done -> pending is not allowed", machine="plan"),
                StepFailure.permanent,
            ),
            (KeyError("a bug"), StepFailure.unexpected),
        ],
        ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
    )
    def test_classification(self, exc: BaseException, expected: StepFailure) -> None:
        assert classify_step_error(exc) is expected


class TestClassifyJobError:
    @pytest.mark.parametrize(
        ("exc", "retries", "expected"),
        [
            (Refused("another task's job", reason="wrong_kind"), 0, JobFailure.refused),
            (NotFound("deleted"), 0, JobFailure.missing),
            (STATEMENT_TIMEOUT, 0, JobFailure.timeout),
            (_db_error(), 0, JobFailure.interrupted),
            (SoftTimeLimitExceeded(), 2, JobFailure.interrupted),
            (_db_error(), 3, JobFailure.exhausted),
            (SoftTimeLimitExceeded(), 3, JobFailure.exhausted),
            (ValueError("bad params"), 0, JobFailure.broken),
            (PermanentError("a bug"), 0, JobFailure.broken),
        ],
    )
    def test_classification(self, exc: BaseException, retries: int, expected: JobFailure) -> None:
        assert classify_job_error(exc, retries=retries, max_retries=3) is expected

    def test_a_statement_timeout_fails_even_with_retries_left(self) -> None:
        assert classify_job_error(STATEMENT_TIMEOUT, retries=0, max_retries=99) is JobFailure.timeout


class _Task(DbTask):
    """A DbTask with no database and no broker: sessions are placeholders, a retry is recorded and raised."""

    name = "exports.run"
    max_retries = 3

    def __init__(self, *, retries: int = 0) -> None:
        self.retries_done = retries
        self.retried: list[dict[str, Any]] = []
        self.refused: list[str] = []

    @property
    def request(self) -> Any:  # the Celery request the runners read
        class _Request:
            id = "task-id"
            retries = self.retries_done

        return _Request()

    @contextmanager
    def session(self) -> Iterator[Any]:
        yield SimpleNamespace(info={})  # a session's `info` is where after-commit sends are kept

    def retry(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        self.retried.append(kwargs)
        raise Retry("retried", kwargs.get("exc"))

    def refuse(self, exc: Refused, **ids: object) -> str:
        self.refused.append(exc.reason)
        return "refused"


@pytest.fixture
def no_job_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task_ids, "check_job", lambda session, task, job_id: None)


@pytest.mark.usefixtures("no_job_lookup")
class TestRunJob:
    def run(self, task: _Task, exc: BaseException | None) -> tuple[str, list[str]]:
        failed: list[str] = []

        def body(job_id: uuid.UUID) -> str:
            if exc is not None:
                raise exc
            return "done"

        result = task.run_job(
            str(uuid.uuid4()),
            body,
            fail=lambda session, job_id, error: failed.append(error),
            what="export",
            log_key="export_job",
        )
        return result, failed

    def test_a_finished_body_returns_its_result(self) -> None:
        assert self.run(_Task(), None) == ("done", [])

    def test_an_id_that_is_no_uuid_is_refused_before_anything_runs(self) -> None:
        task = _Task()
        called: list[uuid.UUID] = []

        def body(job_id: uuid.UUID) -> str:
            called.append(job_id)
            return "done"

        result = task.run_job("../etc", body, fail=lambda *args: None, what="export", log_key="export_job")
        assert (result, task.refused, called) == ("refused", ["bad_id"], [])

    def test_another_tasks_job_is_refused_and_not_failed(self) -> None:
        task = _Task()
        assert self.run(task, Refused("bulk job", reason="wrong_kind")) == ("refused", [])
        assert task.refused == ["wrong_kind"]

    def test_a_vanished_job_is_left_alone(self) -> None:
        assert self.run(_Task(), NotFound("deleted")) == ("missing", [])

    def test_an_interruption_is_retried_without_failing_the_job(self) -> None:
        task = _Task(retries=1)
        with pytest.raises(Retry):
            self.run(task, SoftTimeLimitExceeded())
        assert [r["countdown"] for r in task.retried] == [2]

    def test_an_interruption_past_the_budget_fails_the_job(self) -> None:
        task = _Task(retries=3)
        result, failed = self.run(task, _db_error())
        assert (result, task.retried) == ("failed", [])
        assert failed[0].startswith("OperationalError: ")

    def test_a_statement_timeout_fails_with_its_reason_and_no_retry(self) -> None:
        task = _Task()
        assert self.run(task, STATEMENT_TIMEOUT) == ("failed", [limits.timeout_message()])
        assert task.retried == []

    def test_a_bug_fails_the_job_saying_what_was_raised(self) -> None:
        assert self.run(_Task(), ValueError("bad filter")) == ("failed", ["ValueError: bad filter"])


class _Step:
    kind = StepKind.refund
    plan_id = 1
    request_id = 1
    attempt = 0


class TestRunStep:
    @pytest.fixture
    def recorded(self, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
        calls: list[tuple[str, bool]] = []

        def record_failure(session: object, step_id: int, error: str, **kw: Any) -> StepStatus:
            calls.append((error, kw["permanent"]))
            return StepStatus.dead if kw["permanent"] else StepStatus.pending

        monkeypatch.setattr(steps, "claim", lambda session, step_id, task: _Step())
        monkeypatch.setattr(steps, "record_failure", record_failure)
        return calls

    def run(self, exc: BaseException | None) -> str:
        def handler(session: object, step: object) -> None:
            if exc is not None:
                raise exc

        task = _Task()
        task.name = "payments.refund"
        return task.run_step(7, handler)  # type: ignore[arg-type]

    def test_done(self, recorded: list[tuple[str, bool]]) -> None:
        assert (self.run(None), recorded) == ("done", [])

    def test_already_handled_records_nothing(self, recorded: list[tuple[str, bool]]) -> None:
        assert (self.run(AlreadyHandled("taken")), recorded) == ("already_handled", [])

    def test_refused_records_nothing(self, recorded: list[tuple[str, bool]]) -> None:
        assert (self.run(Refused("a notify step", reason="wrong_kind")), recorded) == ("refused", [])

    @pytest.mark.parametrize(
        ("exc", "permanent", "status"),
        [
            (TransientError("gateway 503"), False, "pending"),
            (_db_error(), False, "pending"),
            (KeyError("bug"), False, "pending"),
            (PermanentError("no reference"), True, "dead"),
        ],
    )
    def test_failures_are_recorded_as_classified(
        self, recorded: list[tuple[str, bool]], exc: BaseException, permanent: bool, status: str
    ) -> None:
        assert self.run(exc) == status
        assert recorded == [(f"{type(exc).__name__}: {exc}", permanent)]
