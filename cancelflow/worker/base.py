"""DbTask: the base every task uses. It owns sessions, logging context and error classification.

Two runners classify what a task's work raised, so that no task hand-rolls retries: `run_step` for a
workflow step (the step row records the failure and its retry), `run_job` for an operator job (bulk tags,
exports: the job row records a failure, the broker carries the retry of an interruption). `retry_soon`
is the one backoff for a message whose work could not start (the database away, a lost race).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import NoReturn

import structlog
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from cancelflow.db import transaction, unavailable
from cancelflow.errors import (
    AlreadyHandled,
    CancelflowError,
    NotFound,
    PermanentError,
    Refused,
    TransientError,
)
from cancelflow.models import WorkflowStep
from cancelflow.models.transitions import InvalidTransition
from cancelflow.services import after_commit, limits, steps, task_ids
from cancelflow.worker.chain import Chain
from cancelflow.worker.metrics import step_duration

log = structlog.get_logger(__name__)

StepHandler = Callable[[Session, WorkflowStep], None]
# The work of a job, given its id: returns the task's result ("done", or "finished" when it had nothing left).
JobBody = Callable[[uuid.UUID], str]
# Marks the job failed with a reason, in the given transaction (a job that ends must not stay `running`).
JobFail = Callable[[Session, uuid.UUID, str], None]

# While the database is away a step's message is re-sent after 0.5, 1, 1, … seconds, up to this many
# times (about five minutes); after that the sweeper re-sends the step once the redelivery grace is over.
# A step waits at most a second past the database's return.
DB_AWAY_FIRST_DELAY = 0.5
DB_AWAY_MAX_DELAY = 1.0
DB_AWAY_MAX_RETRIES = 300
# A message whose work could not start is sent again after 1, 2, 4, … seconds, at most this long.
RETRY_MAX_DELAY = 60


# What `_run_one` returns for a step that was done before its message came (`steps.claim` says so).
_FOUND_DONE = "found_done"


class StepFailure(StrEnum):
    """What `run_step` does with what a step's handler raised."""

    already_handled = "already_handled"  # a duplicate or stale message: nothing to do
    refused = "refused"  # rolled back whole: no status moved, no attempt counted, no money
    transient = "transient"  # retried with backoff within the step's budget
    permanent = "permanent"  # the step goes dead and its plan failed at once
    unexpected = "unexpected"  # a bug: logged with its traceback, retried within the budget, then dead


def classify_step_error(exc: BaseException) -> StepFailure:
    """How a step's error is handled. A database error (connection loss, deadlock, serialisation failure)
    rolled the transaction back whole, so it is transient, as is the soft time limit."""
    if isinstance(exc, AlreadyHandled):
        return StepFailure.already_handled
    if isinstance(exc, Refused):
        return StepFailure.refused
    if isinstance(exc, TransientError | SoftTimeLimitExceeded | DBAPIError):
        return StepFailure.transient
    if isinstance(exc, PermanentError | InvalidTransition | CancelflowError):
        return StepFailure.permanent
    return StepFailure.unexpected


class JobFailure(StrEnum):
    """What `run_job` does with what a job raised."""

    refused = "refused"  # another task's job: nothing was read or written
    missing = "missing"  # deleted since it was queued: nothing to do
    timeout = "timeout"  # the statement timeout: a retry runs into the same one, so the job fails
    exhausted = "exhausted"  # interrupted once too often: the job fails rather than hold its slot
    interrupted = "interrupted"  # a time limit or a lost connection: the message is retried
    broken = "broken"  # bad params or a bug: the job fails, saying why, with no retry


def classify_job_error(exc: BaseException, *, retries: int, max_retries: int) -> JobFailure:
    """How a job's error is handled; `retries` is how often the message was retried already."""
    if isinstance(exc, Refused):
        return JobFailure.refused
    if isinstance(exc, NotFound):
        return JobFailure.missing
    if isinstance(exc, SoftTimeLimitExceeded | DBAPIError):
        if limits.is_statement_timeout(exc):
            return JobFailure.timeout
        if retries >= max_retries:
            return JobFailure.exhausted
        return JobFailure.interrupted
    return JobFailure.broken


class DbTask(Task[..., object]):
    abstract = True
    acks_late = True
    ignore_result = True
    # The service function of a step task, given to its task decorator (`step_handler=staticmethod(...)`):
    # what `run_step` calls, for the task's own message and for a step a chain runs in-process.
    step_handler: StepHandler | None = None

    @contextmanager
    def session(self) -> Iterator[Session]:
        with transaction() as session:
            yield session

    def run_step(self, step_id: int, handler: StepHandler | None = None) -> str:
        """Claim the step row (a kind this task owns, pending), run one service call on it, classify errors;
        then run in-process the successor steps its commit made that may run here (`worker.chain`)."""
        chain = Chain.begin(self.app)
        result = self._run_one(self.name, step_id, handler or self.step_handler, chain=chain)
        if result == _FOUND_DONE:
            result = "already_handled"
            if chain is not None:
                # Maybe a redelivery of a step whose process died after it: go on with what it made next.
                chain.resume(self._successors(step_id))
        if chain is not None:
            self.run_chain(chain)
        return result

    def run_chain(self, chain: Chain) -> None:
        """Run the steps `chain` took, each in its own transaction, as long as its bounds allow."""
        while (taken := chain.next()) is not None:
            task, step_id = taken
            registered = self.app.tasks.get(task)
            handler = registered.step_handler if isinstance(registered, DbTask) else None
            if handler is None:  # no such step task registered in this worker: its message goes out instead
                after_commit.deliver([after_commit.Send(task, (step_id,))])
                continue
            self._run_one(task, step_id, handler, chain=chain, chained=True)

    def _run_one(
        self,
        task: str,
        step_id: int,
        handler: StepHandler | None,
        *,
        chain: Chain | None,
        chained: bool = False,
    ) -> str:
        assert handler is not None, f"{task} has no step handler"
        structlog.contextvars.bind_contextvars(
            step_id=task_ids.shown(step_id), task=task, task_id=self.request.id, chained=chained
        )
        kind: str | None = None
        started = time.monotonic()
        try:
            with self.session() as session:
                if chain is not None:
                    after_commit.take_sends(session, chain.take)
                step = steps.claim(session, step_id, task=task)
                kind = step.kind.value
                structlog.contextvars.bind_contextvars(
                    plan_id=step.plan_id, request_id=step.request_id, attempt=step.attempt + 1
                )
                handler(session, step)
            log.info("step done")
            return "done"
        except Exception as exc:  # noqa: BLE001 -- classified by classify_step_error, then logged and recorded
            return self._step_raised(task, step_id, kind, exc, chained=chained)
        finally:
            step_duration().labels(task=task, chained=str(chained).lower()).observe(
                time.monotonic() - started
            )
            structlog.contextvars.clear_contextvars()

    def _successors(self, step_id: int) -> list[tuple[str, int]]:
        try:
            with self.session() as session:
                return steps.successors_of(session, task_ids.checked_int(self.name, step_id))
        except (DBAPIError, Refused) as exc:  # only a shortcut: the sweeper re-sends those steps all the same
            log.warning(
                "could not look for the steps after a finished step", error=f"{type(exc).__name__}: {exc}"
            )
            return []

    def _step_raised(
        self, task: str, step_id: int, kind: str | None, exc: Exception, *, chained: bool
    ) -> str:
        failure = classify_step_error(exc)
        if failure is StepFailure.already_handled:
            log.info("step already handled", reason=getattr(exc, "message", str(exc)))
            return _FOUND_DONE if getattr(exc, "code", None) == "step_done" else "already_handled"
        if failure is StepFailure.refused:
            assert isinstance(exc, Refused)
            return self.refuse(exc, task=task, step_id=task_ids.shown(step_id), step_kind=exc.kind or kind)
        if failure is StepFailure.unexpected:
            log.exception("step raised an unexpected error")
        return self._failed(
            step_id, exc, permanent=failure is StepFailure.permanent, task=task, chained=chained
        )

    def run_job(self, job_id: str, body: JobBody, *, fail: JobFail, what: str, log_key: str) -> str:
        """Check the job id belongs to this task, run `body`, classify what it raised (`classify_job_error`).

        `what` names the job in log lines ("export"), `log_key` is the logging-context key of its id.
        """
        try:
            job_uuid = task_ids.checked_uuid(self.name, job_id)
        except Refused as exc:
            return self.refuse(exc, job_id=task_ids.shown(job_id))
        structlog.contextvars.bind_contextvars(**{log_key: job_id}, task=self.name)
        try:
            with self.session() as session:
                task_ids.check_job(session, self.name, job_uuid)
            return body(job_uuid)
        except Exception as exc:  # noqa: BLE001 -- classified by classify_job_error, logged, recorded on the job
            return self._job_failed(job_uuid, exc, fail=fail, what=what)
        finally:
            structlog.contextvars.clear_contextvars()

    def _job_failed(self, job_uuid: uuid.UUID, exc: Exception, *, fail: JobFail, what: str) -> str:
        error = f"{type(exc).__name__}: {exc}"
        failure = classify_job_error(exc, retries=self.request.retries, max_retries=self.max_retries or 0)
        if failure is JobFailure.refused:
            assert isinstance(exc, Refused)
            return self.refuse(exc, job_id=str(job_uuid), job_kind=exc.kind)
        if failure is JobFailure.missing:
            log.warning(f"{what} vanished")
            return "missing"
        if failure is JobFailure.interrupted:
            # What is committed stays: an export is rewritten whole, a bulk job resumes after its last_id.
            log.warning(f"{what} interrupted, retrying", error=error)
            self.retry_soon(exc)
        if failure is JobFailure.timeout:
            log.warning(f"{what} stopped by the statement timeout", error=error)
            reason = limits.timeout_message()
        elif failure is JobFailure.exhausted:
            log.warning(f"{what} interrupted too often, failing", error=error)
            reason = error
        else:
            log.exception(f"{what} failed")
            reason = error
        with self.session() as session:
            fail(session, job_uuid, reason)
        return "failed"

    def retry_soon(self, exc: Exception) -> NoReturn:
        """Send this message again after 1, 2, 4, … seconds (capped); Celery stops at `max_retries`."""
        countdown = min(RETRY_MAX_DELAY, 2**self.request.retries)
        raise self.retry(exc=exc, countdown=countdown) from exc

    def retry_while_db_away(
        self,
        exc: Exception,
        *,
        args: tuple[object, ...] | None = None,
        kwargs: dict[str, object] | None = None,
    ) -> NoReturn:
        """Send this message again after 0.5, 1, 2, 2, … seconds, up to `DB_AWAY_MAX_RETRIES` times: the
        row keeps its redelivery grace, so the message is its fast path once the database is back."""
        countdown = min(DB_AWAY_MAX_DELAY, DB_AWAY_FIRST_DELAY * 2**self.request.retries)
        raise self.retry(
            args=args, kwargs=kwargs, exc=exc, countdown=countdown, max_retries=DB_AWAY_MAX_RETRIES
        ) from exc

    def refuse(self, exc: Refused, *, task: str | None = None, **ids: object) -> str:
        """Log and count a message this task (or the chained step of `task`) must not act on; the caller
        has changed nothing."""
        from cancelflow.worker.metrics import forged_tasks

        task = task or self.name
        forged_tasks().labels(task=task, reason=exc.reason).inc()
        log.warning("forged task refused", task=task, reason=exc.reason, error=exc.message, **ids)
        return "refused"

    def _failed(
        self,
        step_id: int,
        exc: BaseException,
        *,
        permanent: bool,
        task: str | None = None,
        chained: bool = False,
    ) -> str:
        """Record a failed attempt of the step (of `task`, this task's by default; `chained`: run in-process
        after the step before, so there is no message of its own to retry)."""
        task = task or self.name
        error = f"{type(exc).__name__}: {exc}"
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        try:
            with self.session() as session:
                status = steps.record_failure(
                    session, step_id, error, task=task, permanent=permanent, retry_after=retry_after
                )
        except DBAPIError as db_error:
            if not unavailable(db_error):
                # A statement the database refused (a bug, a schema older than the code): re-sending the
                # message would only repeat it, so the row keeps its redelivery grace for the sweeper.
                log.error("step failed and its failure could not be recorded", error=error)
                if chained:
                    return "failed"  # the task's own step is done; the sweeper re-sends this one
                raise
            if chained:
                # No message of this step to retry: send it one, delayed as a retry would be; the sweeper
                # re-sends the row after the grace if the broker is away too.
                log.warning("chained step failed and the database is away; publishing it", error=error)
                after_commit.deliver([after_commit.Send(task, (step_id,), countdown=DB_AWAY_FIRST_DELAY)])
                return "failed"
            # The database is away, so the failure cannot be recorded and the row keeps its redelivery
            # grace. The message is the step's only fast path: send it again shortly (bounded), so that
            # the step runs seconds after the database returns; past the bound the sweeper takes over.
            retries = self.request.retries
            if retries >= DB_AWAY_MAX_RETRIES:
                log.error("step failed and the database is away; left to the sweeper", error=error)
                raise
            log.warning(
                "step failed and the database is away; retrying the message",
                error=error,
                db_error=type(db_error).__name__,
            )
            self.retry_while_db_away(db_error, args=(step_id,), kwargs={})
        level = logging.ERROR if status.value == "dead" else logging.WARNING
        log.log(level, "step failed", error=error, permanent=permanent, step_status=status.value)
        return status.value
