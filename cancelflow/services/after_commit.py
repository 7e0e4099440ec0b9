"""Ask for follow-up work that is sent to the broker only once the transaction has committed.

Services never import Celery: they name a task and the ids it needs. Sends go to the broker through
`DEFAULT_SENDER` (the Celery app's `send`), looked up by name at the first send, so no entry point has to
install anything; `set_sender` replaces it (tests, an embedding process). A rollback drops everything that
was asked for; a send that fails after commit is logged and left to the sweeper, which finds the due step
row in the database. A process that runs some of the sends itself (a worker continuing a step's successor
in-process) says so with `take_sends`: what it takes is not sent here, and it either runs it or
`deliver`s it later.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from cancelflow.errors import TransientError

log = logging.getLogger(__name__)

_PENDING_KEY = "cancelflow.pending_sends"
_TAKER_KEY = "cancelflow.send_taker"


@dataclass(frozen=True, slots=True)
class Send:
    """One task message: ids only (a step's, a job's), or the keyword fields of a published message."""

    task: str
    args: tuple[int | str, ...]
    countdown: float | None = None
    kwargs: tuple[tuple[str, Any], ...] = ()


Sender = Callable[[Send], None]
# Where sends go unless `set_sender` says otherwise: "module:function", imported at the first send.
DEFAULT_SENDER: Final = "cancelflow.worker.app:send"
_sender: Sender | None = None
# Told which sends failed after a commit (the broker is away), so the rows can be marked due at once.
_failure_hooks: list[Callable[[list[Send]], None]] = []


def on_send_failure(hook: Callable[[list[Send]], None]) -> None:
    if hook not in _failure_hooks:
        _failure_hooks.append(hook)


def set_sender(sender: Sender | None) -> None:
    """Send through `sender` from now on; None goes back to `DEFAULT_SENDER`."""
    global _sender
    _sender = sender


def sender() -> Sender:
    if _sender is not None:
        return _sender
    module, _, name = DEFAULT_SENDER.partition(":")
    found: Sender = getattr(importlib.import_module(module), name)
    return found


def enqueue_after_commit(
    session: Session, task: str, *ids: int | str, countdown: float | None = None
) -> None:
    """Send `task(*ids)` after this session's transaction commits; never if it rolls back. An id is a
    row's integer key or, for a row keyed by UUID (a background job), its string."""
    pending: list[Send] = session.info.setdefault(_PENDING_KEY, [])
    send = Send(task, tuple(ids), countdown)
    if send not in pending:
        pending.append(send)


def send_now(send: Send) -> None:
    """Send outside any transaction (no row to commit first); raises if the broker refuses it."""
    sender()(send)


def pending_sends(session: Session) -> list[Send]:
    return list(session.info.get(_PENDING_KEY, []))


def take_sends(session: Session, taker: Callable[[Send], bool]) -> None:
    """Offer this session's sends to `taker` once its transaction has committed: a send it returns True
    for is the taker's to run (or to `deliver` later) and is not sent here. Nothing is offered on rollback."""
    session.info[_TAKER_KEY] = taker


@event.listens_for(Session, "after_commit")
def _send_after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint was released (SQLAlchemy fires after_commit for it); the real commit comes later
    sends: list[Send] = session.info.pop(_PENDING_KEY, [])
    taker: Callable[[Send], bool] | None = session.info.pop(_TAKER_KEY, None)
    if taker is not None:
        sends = [send for send in sends if not taker(send)]
    deliver(sends)


def deliver(sends: list[Send]) -> None:
    """Send each of `sends` now (their rows are committed); a failure is logged and left to the sweeper."""
    if not sends:
        return
    send_one = sender()
    failed = []
    for send in sends:
        try:
            send_one(send)
        except TransientError as exc:  # the broker is down: the hooks below mark the step row due
            # One line, no traceback: a broker that does not answer is an operating condition, not a bug.
            log.warning(
                "send of %s%s failed after commit (%s: %s); the sweeper will retry",
                send.task,
                send.args,
                type(exc).__name__,
                exc,
            )
            failed.append(send)
        except Exception:  # anything else is unexpected, but the row is due all the same: the sweeper resends
            log.exception("send of %s%s failed after commit; the sweeper will retry", send.task, send.args)
            failed.append(send)
    for hook in _failure_hooks if failed else ():
        try:
            hook(failed)
        except Exception:  # the database went too: the rows stay due after the redelivery grace
            log.exception("could not mark %d unsent jobs due", len(failed))


@event.listens_for(Session, "after_transaction_end")
def _drop_unsent(session: Session, transaction: SessionTransaction) -> None:
    # The outermost transaction ended without commit (rollback or close): its sends must never happen.
    if transaction.parent is None:
        session.info.pop(_PENDING_KEY, None)
        session.info.pop(_TAKER_KEY, None)
