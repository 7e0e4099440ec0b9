"""Bounds on background work: jobs per token, and the statement timeout of export and bulk-tag queries.

* **Jobs per token (or console user).** An export or bulk job started through the API records its token
  (`params["token_id"]`), one started from the console its user (`params["user_id"]`). Before a new one is
  stored, `claim_job_slot` counts that owner's jobs still `pending` or `running` under a
  transaction-scoped advisory lock on the owner, so concurrent requests cannot both take the last slot; at
  the limit the answer is `TooManyJobs` (HTTP 429 with `Retry-After`). The limits are
  `export_jobs_per_token` and `bulk_jobs_per_token` for either owner. Jobs started from the CLI carry
  neither and are not counted.
* **Statement timeout.** Every statement of an export (each cursor fetch) and of a bulk-tag chunk runs
  under `SET LOCAL statement_timeout = job_statement_timeout`; PostgreSQL cancels a longer one
  (SQLSTATE 57014), which `is_statement_timeout` recognises so the job fails with that reason instead of
  being retried into the same timeout.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import Connection, func, select, text
from sqlalchemy.orm import Session

from cancelflow.config import get_settings
from cancelflow.errors import TooManyJobs
from cancelflow.models import BulkJob, ExportJob, JobStatus

QUERY_CANCELED: Final = "57014"  # PostgreSQL: statement_timeout (or a cancel request) stopped the statement
RETRY_AFTER_SECONDS: Final = 30
ACTIVE: Final = (JobStatus.pending, JobStatus.running)


def claim_job_slot(
    session: Session,
    model: type[BulkJob] | type[ExportJob],
    token_id: int | None,
    *,
    user_id: int | None = None,
) -> None:
    """TooManyJobs unless the owner (`token_id`, or else the console's `user_id`) has fewer active jobs of
    this kind than its limit. Call in the transaction that then stores the job: the advisory lock is held
    until it commits."""
    owner_key, owner_id, who = "token_id", token_id, "This token"
    if token_id is None:
        owner_key, owner_id, who = "user_id", user_id, "You"
    if owner_id is None:
        return
    settings = get_settings()
    limit, what = (
        (settings.export_jobs_per_token, "export")
        if model is ExportJob
        else (settings.bulk_jobs_per_token, "bulk")
    )
    session.execute(
        select(
            func.pg_advisory_xact_lock(
                func.hashtextextended(f"cancelflow.jobs:{model.__tablename__}:{owner_key}", owner_id)
            )
        )
    )
    active = session.scalar(
        select(func.count())
        .select_from(model)
        .where(model.status.in_(ACTIVE), model.params[owner_key].as_integer() == owner_id)
    )
    if (active or 0) >= limit:
        has = "has" if owner_key == "token_id" else "have"
        raise TooManyJobs(
            f"{who} already {has} {active} {what} jobs queued or running (at most {limit}); "
            "wait for one to finish.",
            retry_after=RETRY_AFTER_SECONDS,
        )


def set_statement_timeout(connection: Connection | Session) -> None:
    """Bound every following statement of the current transaction by `job_statement_timeout`."""
    milliseconds = max(1, int(get_settings().job_statement_timeout.total_seconds() * 1000))
    connection.execute(text(f"SET LOCAL statement_timeout = {milliseconds}"))  # an int: nothing to bind


def is_statement_timeout(exc: BaseException) -> bool:
    """True for a statement PostgreSQL cancelled (statement_timeout): retrying runs into it again."""
    orig: Any = getattr(exc, "orig", exc)
    return getattr(orig, "pgcode", None) == QUERY_CANCELED


def timeout_message() -> str:
    seconds = get_settings().job_statement_timeout.total_seconds()
    return f"a query ran longer than the statement timeout ({seconds:g} s, CANCELFLOW_JOB_STATEMENT_TIMEOUT)"


__all__ = ["claim_job_slot", "is_statement_timeout", "set_statement_timeout", "timeout_message"]
