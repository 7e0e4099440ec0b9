"""DbTask: the base every task uses. It owns sessions, logging context and error classification."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import structlog
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from cancelflow.db import transaction, unavailable
from cancelflow.errors import AlreadyHandled, CancelflowError, PermanentError, Refused, TransientError
from cancelflow.models import WorkflowStep
from cancelflow.models.transitions import InvalidTransition
from cancelflow.services import steps, task_ids

log = structlog.get_logger(__name__)

StepHandler = Callable[[Session, WorkflowStep], None]

# While the database is away a step's message is re-sent after 0.5, 1, 1, … seconds, up to this many
# times (about five minutes); after that the sweeper re-sends the step once the redelivery grace is over.
# A step waits at most a second past the database's return.
DB_AWAY_FIRST_DELAY = 0.5
DB_AWAY_MAX_DELAY = 1.0
DB_AWAY_MAX_RETRIES = 300


class DbTask(Task):  # type: ignore[type-arg]
    abstract = True
    acks_late = True
    ignore_result = True

    @contextmanager
    def session(self) -> Iterator[Session]:
        with transaction() as session:
            yield session

    def run_step(self, step_id: int, handler: StepHandler) -> str:
        """Claim the step row (a kind this task owns, pending), run one service call on it, classify errors."""
        structlog.contextvars.bind_contextvars(
            step_id=task_ids.shown(step_id), task=self.name, task_id=self.request.id
        )
        kind: str | None = None
        try:
            with self.session() as session:
                step = steps.claim(session, step_id, task=self.name)
                kind = step.kind.value
                structlog.contextvars.bind_contextvars(
                    plan_id=step.plan_id, request_id=step.request_id, attempt=step.attempt + 1
                )
                handler(session, step)
            log.info("step done")
            return "done"
        except AlreadyHandled as exc:
            log.info("step already handled", reason=exc.message)
            return "already_handled"
        except Refused as exc:  # rolled back whole: no status moved, no attempt counted, no money
            return self.refuse(exc, step_id=task_ids.shown(step_id), step_kind=exc.kind or kind)
        except (TransientError, SoftTimeLimitExceeded) as exc:
            return self._failed(step_id, exc, permanent=False)
        except DBAPIError as exc:
            # Connection loss, deadlock, serialisation failure: the transaction was rolled back whole.
            return self._failed(step_id, exc, permanent=False)
        except (PermanentError, InvalidTransition, CancelflowError) as exc:
            return self._failed(step_id, exc, permanent=True)
        except Exception as exc:  # an unforeseen bug: retried within the budget, then dead for an operator
            log.exception("step raised an unexpected error")
            return self._failed(step_id, exc, permanent=False)
        finally:
            structlog.contextvars.clear_contextvars()

    def refuse(self, exc: Refused, **ids: object) -> str:
        """Log and count a message this task must not act on; the caller has changed nothing."""
        from cancelflow.worker.metrics import forged_tasks

        forged_tasks().labels(task=self.name, reason=exc.reason).inc()
        log.warning("forged task refused", task=self.name, reason=exc.reason, error=exc.message, **ids)
        return "refused"

    def _failed(self, step_id: int, exc: BaseException, *, permanent: bool) -> str:
        error = f"{type(exc).__name__}: {exc}"
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        try:
            with self.session() as session:
                status = steps.record_failure(
                    session, step_id, error, task=self.name, permanent=permanent, retry_after=retry_after
                )
        except DBAPIError as db_error:
            if not unavailable(db_error):
                # A statement the database refused (a bug, a schema older than the code): re-sending the
                # message would only repeat it, so the row keeps its redelivery grace for the sweeper.
                log.error("step failed and its failure could not be recorded", error=error)
                raise
            # The database is away, so the failure cannot be recorded and the row keeps its redelivery
            # grace. The message is the step's only fast path: send it again shortly (bounded), so that
            # the step runs seconds after the database returns; past the bound the sweeper takes over.
            retries = self.request.retries
            if retries >= DB_AWAY_MAX_RETRIES:
                log.error("step failed and the database is away; left to the sweeper", error=error)
                raise
            countdown = min(DB_AWAY_MAX_DELAY, DB_AWAY_FIRST_DELAY * 2**retries)
            log.warning(
                "step failed and the database is away; retrying the message",
                error=error,
                db_error=type(db_error).__name__,
                retry_in=countdown,
            )
            raise self.retry(
                args=(step_id,), kwargs={}, countdown=countdown, max_retries=DB_AWAY_MAX_RETRIES
            ) from db_error
        level = logging.ERROR if status.value == "dead" else logging.WARNING
        log.log(level, "step failed", error=error, permanent=permanent, step_status=status.value)
        return status.value
