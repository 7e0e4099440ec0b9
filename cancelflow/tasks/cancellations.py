"""The request's own steps: intake, validation and approval, routing, closing."""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy.exc import DBAPIError, IntegrityError

from cancelflow.config import get_settings
from cancelflow.db import unavailable
from cancelflow.errors import Invalid
from cancelflow.services import after_commit, approval, intake, routing, settlement
from cancelflow.services.clock import now
from cancelflow.textcheck import storable
from cancelflow.worker.app import celery_app
from cancelflow.worker.base import DbTask
from cancelflow.worker.chain import Chain

log = structlog.get_logger(__name__)


@celery_app.task(name="cancellations.submit", base=DbTask, bind=True, max_retries=8)
def submit(self: DbTask, *args: Any, **kwargs: Any) -> str:
    """Store a storefront's cancellation message as a request (kwargs only; see intake.SubmitMessage)."""
    client_request_id = kwargs.get("client_request_id")
    # Logged as sent, except text no log line can carry (NUL, lone surrogates), which is escaped.
    ref = storable(client_request_id) if isinstance(client_request_id, str) else repr(client_request_id)[:100]
    if args:
        log.warning("cancellation message rejected", client_request_id=ref, reason="positional arguments")
        _keep_rejection(
            self,
            kwargs,
            Invalid(
                "malformed cancellation message",
                field_errors={"non_field_errors": ["Arguments must be passed by keyword."]},
                code="invalid_message",
            ),
        )
        return "invalid"
    # The new request's validation (and what follows it) runs here when this worker serves its queue.
    chain = Chain.begin(self.app)
    try:
        with self.session() as session:
            if chain is not None:
                after_commit.take_sends(session, chain.take)
            result = intake.submit(session, kwargs)
            status = result.request.status.value
            request_id = result.request.id
    except Invalid as exc:
        log.warning(
            "cancellation message rejected",
            client_request_id=ref,
            code=exc.code,
            errors=exc.field_errors or exc.message,
        )
        _keep_rejection(self, kwargs, exc)
        return "invalid"
    except IntegrityError as exc:
        # A twin message with the same client_request_id won a race: the retry finds its request.
        self.retry_soon(exc)
    except DBAPIError as exc:
        if not unavailable(exc):
            raise
        # The database is away (restarting, a dropped connection): the broker keeps the retry.
        self.retry_soon(exc)
    log.info(
        "cancellation request stored",
        client_request_id=ref,
        request_id=request_id,
        status=status,
        created=result.created,
    )
    if chain is not None:
        self.run_chain(chain)
    return status


def _keep_rejection(task: DbTask, kwargs: dict[str, Any], exc: Invalid) -> None:
    """Record the refusal where the storefront can read it (by client_request_id); the log line stays."""
    try:
        with task.session() as session:
            intake.record_rejection(
                session, kwargs, code=exc.code, message=exc.message, errors=exc.field_errors
            )
    except DBAPIError as db_error:  # the database is away: the log line has it
        log.warning("cancellation message rejection not recorded", error=str(db_error))


@celery_app.task(
    name="cancellations.validate", base=DbTask, bind=True, step_handler=staticmethod(approval.validate_step)
)
def validate(self: DbTask, step_id: int) -> str:
    """Re-check the request and apply the approval rule."""
    return self.run_step(step_id)


@celery_app.task(
    name="cancellations.route", base=DbTask, bind=True, step_handler=staticmethod(routing.route_step)
)
def route(self: DbTask, step_id: int) -> str:
    """Cancel locally what no service holds; ask the services about the rest."""
    return self.run_step(step_id)


@celery_app.task(
    name="cancellations.close", base=DbTask, bind=True, step_handler=staticmethod(settlement.close_step)
)
def close(self: DbTask, step_id: int) -> str:
    """Complete the plan and the request once the money has moved."""
    return self.run_step(step_id)


@celery_app.task(name="cancellations.prune_rejections", base=DbTask, bind=True)
def prune_rejections(self: DbTask) -> int:
    """Delete refused storefront messages older than CANCELFLOW_REJECTED_MESSAGE_RETENTION, a batch a run."""
    with self.session() as session:
        return intake.prune_rejections(session, older_than=now() - get_settings().rejected_message_retention)
